"""Running an evaluation: which cells, in which order, resumable, within a time budget.

For every model, task and length the harness walks the units (text windows or retrieval
samples) and, for each unit, runs dense first and then every sparse setting, so that at any
stopping point all settings of a cell have the same units (the comparison stays paired), KL has
its dense logits, and a setting that is dense by construction can reuse the dense result.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from evaluation import metrics, windows
from evaluation.harness.model_runs import (
    EvalModel,
    answer_prompt,
    load_eval_model,
    score_window,
    stats_record,
)
from evaluation.harness.options import EvalOptions, RunReport
from evaluation.harness.settings import DENSE, Setting
from evaluation.harness.store import TEXT, CellKey, ResultStore
from evaluation.tasks import (
    TaskSample,
    generate_samples,
    get_task,
    score_sample,
    task_needs_essay,
)

__all__ = ["TEXT", "run_evaluation"]

# Windows offered per novel (interleaved_windows); fixed so that windows never change.
WINDOWS_PER_DOCUMENT = 8
_DENSE_SETTING = Setting(method=DENSE, variant=None)


class Progress(Protocol):
    """What the harness calls on a progress bar (tqdm's interface)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str) -> Any: ...

    def close(self) -> Any: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        del n

    def set_postfix_str(self, s: str) -> None:
        del s

    def close(self) -> None:
        pass


def _text_parameters(evaluated: EvalModel, setting: Setting, options: EvalOptions) -> dict:
    return {
        "model": evaluated.name,
        "dtype": evaluated.dtype,
        "setting": setting.label,
        "config": dataclasses.asdict(setting.config()) if setting.config() else None,
        "table": evaluated.table_source if setting.method == "shareprefill" else None,
        "kl_positions": options.kl_positions,
        "windows_per_document": WINDOWS_PER_DOCUMENT,
        "documents": "austen" if options.documents is None else "custom",
    }


def _retrieval_parameters(
    evaluated: EvalModel,
    setting: Setting,
    options: EvalOptions,
    max_new_tokens: int,
    prompt_length: int,
) -> dict:
    return {
        "model": evaluated.name,
        "prompt_length": prompt_length,
        "dtype": evaluated.dtype,
        "setting": setting.label,
        "config": dataclasses.asdict(setting.config()) if setting.config() else None,
        "table": evaluated.table_source if setting.method == "shareprefill" else None,
        "max_new_tokens": max_new_tokens,
        "seed": options.seed,
        "prompt_format": evaluated.prompt_format,
        "haystack": "paul-graham" if options.haystack_text is None else "custom",
    }


def _copy_dense(dense_record: dict, setting: Setting) -> dict:
    record = dict(dense_record)
    record.update(setting=setting.label, dense_by_construction=True, seconds=0.0)
    return record


def _copy_twin(twin_record: dict, setting: Setting, twin: str) -> dict:
    record = dict(twin_record)
    record.update(setting=setting.label, same_as=twin, seconds=0.0)
    return record


def _twin_of(evaluated: EvalModel, setting: Setting, labels: Sequence[str]) -> str | None:
    """The setting whose run is this one's exactly, if any.

    SharePrefill without shared clusters is FlexPrefill (the planner takes the same path and the
    same kernel runs), so its result is FlexPrefill's under the same variant.
    """
    table = evaluated.table
    if setting.method == "shareprefill" and (table is None or table.num_shared == 0):
        twin = Setting(method="flexprefill", variant=setting.variant).label
        if twin in labels:
            return twin
    return None


class _Unit(NamedTuple):
    """One text window or retrieval sample, as the unit loop walks it.

    name: its id in the cells' unit files; shown: how the progress bar names it; num_tokens:
    its prompt length (whether a setting is dense by construction); run: setting -> record.
    """

    name: str
    shown: str
    num_tokens: int
    run: Callable[[Setting], dict]


def _run_order(settings: list[Setting]) -> list[Setting]:
    """Dense first and FlexPrefill before SharePrefill, so copies find what they copy."""
    return sorted(settings, key=lambda s: (not s.is_dense, s.method == "shareprefill"))


class _Runner:
    def __init__(self, options, store, progress_factory, log, injected_models):
        self.options = options
        self.store = store
        self.progress_factory = progress_factory or (lambda total, desc: _NoProgress())
        self.log = log or (lambda message: None)
        self.injected_models = dict(injected_models or {})
        self.report = RunReport()
        self.start = time.monotonic()
        self._documents: Mapping[str, str] | None = options.documents
        self._essays: str | None = options.haystack_text

    def out_of_time(self) -> bool:
        budget = self.options.device_budget_s
        if budget is not None and time.monotonic() - self.start > budget:
            self.report.stopped_by_budget = True
        return self.report.stopped_by_budget

    def documents(self) -> Mapping[str, str]:
        if self._documents is None:
            from evaluation.texts import load_austen_novels

            self._documents = load_austen_novels()
        return self._documents

    def essays(self) -> str:
        if self._essays is None:
            from evaluation.texts import load_paul_graham_essays

            self._essays = load_paul_graham_essays()
        return self._essays

    def run(self) -> RunReport:
        for name in self.options.models:
            if self.out_of_time():
                break
            evaluated = self.injected_models.get(name) or load_eval_model(
                name,
                dtype=self.options.dtype,
                table=self.options.table,
                yarn_factor=self.options.yarn_factor,
            )
            self.log(f"{name}: dtype {evaluated.dtype}, sharing table: {evaluated.table_source}")
            tokens: dict[str, np.ndarray] | None = None
            for task in self.options.tasks:
                is_text = task == TEXT
                lengths = (
                    self.options.text_lengths if is_text else self.options.retrieval_lengths
                ).get(name, ())
                for length in lengths:
                    if self.out_of_time():
                        break
                    if length > evaluated.context:
                        self.report.skipped.append(
                            f"{name} {task} L{length}: beyond the model's context "
                            f"({evaluated.context} tokens)"
                        )
                        continue
                    if is_text:
                        if tokens is None:
                            tokens = windows.tokenize_documents(self.documents(), evaluated.encode)
                        self.run_text(evaluated, tokens, length)
                    else:
                        self.run_retrieval(evaluated, task, length)
        self.report.seconds = time.monotonic() - self.start
        return self.report

    def _cells(self, evaluated, task, length, parameters) -> dict[str, CellKey]:
        cells = {}
        for setting in self.options.settings():
            cell = CellKey(evaluated.name, task, length, setting.label)
            self.store.check_parameters(cell, parameters(setting))
            cells[setting.label] = cell
        return cells

    def run_units(
        self,
        evaluated: EvalModel,
        cells: Mapping[str, CellKey],
        settings: Sequence[Setting],
        units: Iterable[_Unit],
        *,
        total: int,
        description: str,
    ) -> None:
        """Each unit under every setting in order: found on disk, copied or run, then stored.

        A unit already in a setting's cell is counted and skipped; one that the setting would
        run exactly as dense (dense by construction) or as its twin copies that record; the
        others run. The time budget is checked before each unit that is not on disk.
        """
        bar = self.progress_factory(total * len(settings), description)
        try:
            for unit in units:
                for setting in settings:
                    cell = cells[setting.label]
                    if self.store.has(cell, unit.name):
                        self.report.units_done_before += 1
                        bar.update()
                        continue
                    if self.out_of_time():
                        return
                    bar.set_postfix_str(f"{unit.shown} {setting.label}")
                    if setting.is_dense_by_construction(unit.num_tokens) and not setting.is_dense:
                        dense_record = self.store.units(cells[DENSE])[unit.name]
                        record = _copy_dense(dense_record, setting)
                        self.report.units_reused += 1
                    elif twin := _twin_of(evaluated, setting, list(cells)):
                        twin_record = self.store.units(cells[twin])[unit.name]
                        record = _copy_twin(twin_record, setting, twin)
                        self.report.units_reused += 1
                    else:
                        record = unit.run(setting)
                        self.report.units_run += 1
                    self.store.append(cell, record)
                    bar.update()
        finally:
            bar.close()

    def run_text(self, evaluated: EvalModel, tokens: Mapping[str, np.ndarray], length: int):
        options = self.options
        counts = {name: ids.size for name, ids in tokens.items()}
        plan = windows.interleaved_windows(
            counts, length, options.windows, per_document=WINDOWS_PER_DOCUMENT
        )
        if len(plan) < options.windows:
            self.log(f"{evaluated.name} text L{length}: only {len(plan)} windows available")
        settings = _run_order(options.settings())
        cells = self._cells(
            evaluated, TEXT, length, lambda s: _text_parameters(evaluated, s, options)
        )

        def units() -> Iterator[_Unit]:
            for window, ids in windows.iter_window_tokens(tokens, plan):
                unit = f"{window.document}-{window.slot}"
                # The window's dense last logits, once run or read (the sparse runs' KL needs them).
                dense_logits: dict[str, np.ndarray] = {}
                run = functools.partial(
                    self.run_window, evaluated, length, window, ids, dense_logits
                )
                yield _Unit(name=unit, shown=unit, num_tokens=length, run=run)

        self.run_units(
            evaluated,
            cells,
            settings,
            units(),
            total=len(plan),
            description=f"{evaluated.name} text L{length}",
        )

    def run_window(
        self,
        evaluated: EvalModel,
        length: int,
        window: windows.Window,
        ids: np.ndarray,
        dense_logits: dict[str, np.ndarray],
        setting: Setting,
    ) -> dict:
        """One window under one setting; `dense_logits` keeps the window's dense last logits.

        A sparse setting needs them for its KL: they come from the dense run of this window,
        else the store's cache, else dense runs again (the cache was cleared).
        """
        unit = f"{window.document}-{window.slot}"
        if not setting.is_dense and "last" not in dense_logits:
            last = self.store.load_dense_logits(evaluated.name, length, unit)
            if last is None:  # the cache was cleared: run dense again
                scored = score_window(
                    evaluated,
                    ids,
                    evaluated.attention(_DENSE_SETTING),
                    kl_positions=self.options.kl_positions,
                )
                last = scored.last_logits
                self.store.save_dense_logits(evaluated.name, length, unit, last)
            dense_logits["last"] = last
        record = self.text_unit(evaluated, setting, window, ids, dense_logits.get("last"))
        if setting.is_dense:
            dense_logits["last"] = record.pop("_last_logits")
            self.store.save_dense_logits(evaluated.name, length, unit, dense_logits["last"])
        return record

    def text_unit(self, evaluated, setting, window, ids, dense_logits) -> dict:
        options = self.options
        attention = evaluated.attention(setting, compare=not setting.is_dense)
        scored = score_window(evaluated, ids, attention, kl_positions=options.kl_positions)
        nll = -scored.log_likelihoods
        half = ids.shape[0] // 2
        record: dict[str, Any] = {
            "unit": f"{window.document}-{window.slot}",
            "setting": setting.label,
            "document": window.document,
            "slot": window.slot,
            "start": window.start,
            "stop": window.stop,
            "num_scored": int(nll.size),
            "nll_sum": float(nll.sum()),
            # Targets at positions >= T/2: tokens with at least T/2 tokens of context.
            "num_scored_second_half": int(nll[half - 1 :].size),
            "nll_sum_second_half": float(nll[half - 1 :].sum()),
            "seconds": round(scored.seconds, 3),
            "dense_by_construction": False,
        }
        if setting.is_dense:
            record |= {"kl_mean": 0.0, "kl_max": 0.0, "top1_agreement": 1.0}
            record["_last_logits"] = scored.last_logits
        else:
            kl = metrics.kl_divergence(dense_logits, scored.last_logits)
            agree = metrics.top1_agreement(dense_logits, scored.last_logits)
            record |= {
                "kl_mean": float(kl.mean()),
                "kl_max": float(kl.max()),
                "top1_agreement": float(agree.mean()),
                "kl_positions": int(kl.size),
            }
        record |= stats_record(scored.stats, evaluated.num_layers, evaluated.num_heads)
        return record

    def max_new_tokens(self, task: str) -> int:
        budget = get_task(task).tokens_to_generate
        cap = self.options.max_new_tokens
        return budget if cap is None else min(budget, cap)

    def run_retrieval(self, evaluated: EvalModel, task: str, length: int):
        options = self.options
        max_new = self.max_new_tokens(task)
        prompt_length = evaluated.prompt_length(length, max_new)
        settings = _run_order(options.settings())
        cells = self._cells(
            evaluated,
            task,
            length,
            lambda s: _retrieval_parameters(evaluated, s, options, max_new, prompt_length),
        )
        num_samples = options.samples_for(task)
        pending = any(
            not self.store.has(cells[s.label], str(i)) for i in range(num_samples) for s in settings
        )
        if not pending:
            self.report.units_done_before += num_samples * len(settings)
            return
        samples = generate_samples(
            task,
            length=prompt_length,
            encode=evaluated.encode,
            num_samples=num_samples,
            seed=options.seed,
            haystack_text=self.essays() if task_needs_essay(get_task(task)) else None,
            prompt_format=evaluated.prompt_format,
        )

        def units() -> Iterator[_Unit]:
            for sample in samples:
                unit = str(sample.index)
                ids = evaluated.encode(sample.prompt)
                run = functools.partial(self.retrieval_unit, evaluated, sample, ids, max_new)
                yield _Unit(name=unit, shown=f"#{unit}", num_tokens=len(ids), run=run)

        self.run_units(
            evaluated,
            cells,
            settings,
            units(),
            total=num_samples,
            description=f"{evaluated.name} {task} L{length}",
        )

    def retrieval_unit(
        self,
        evaluated: EvalModel,
        sample: TaskSample,
        ids: list[int],
        max_new_tokens: int,
        setting: Setting,
    ) -> dict:
        answer = answer_prompt(
            evaluated, ids, evaluated.attention(setting), max_new_tokens=max_new_tokens
        )
        record = {
            "unit": str(sample.index),
            "setting": setting.label,
            "index": sample.index,
            "num_tokens": len(ids),
            "depths": list(sample.depths),
            "answers": list(sample.answers),
            "reply": answer.text,
            "score": score_sample(sample, answer.text),
            "generated_tokens": answer.num_tokens,
            "seconds": round(answer.seconds, 3),
            "dense_by_construction": False,
        }
        record |= stats_record(answer.stats, evaluated.num_layers, evaluated.num_heads)
        return record


def run_evaluation(
    options: EvalOptions,
    store: ResultStore,
    *,
    progress: Callable[[int, str], Progress] | None = None,
    log: Callable[[str], None] | None = None,
    models: Mapping[str, EvalModel] | None = None,
) -> RunReport:
    """Runs every unfinished unit of every cell the options describe.

    Args:
      options: what to evaluate.
      store: the results directory (finished units there are skipped).
      progress: `progress(total, description)` returns a bar for one (model, task, length);
        e.g. `lambda total, desc: tqdm(total=total, desc=desc)`. None shows nothing.
      log: receives one-line messages (which table, skipped cells). None drops them.
      models: already loaded models by name (tests); others are loaded by name.

    Returns:
      What was run, what was already there, and whether the time budget stopped the run.
    """
    return _Runner(options, store, progress, log, models).run()
