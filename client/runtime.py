"""What one hospital does in a federation, without any transport: describe its data, train its
blocks, run a FedAvg round on a block or on the fused model, evaluate models on its test patients.

Only aggregate figures, weights and packages leave these methods; never patient data or ids.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from fedlego.client.local_round import local_round, paired_rows
from fedlego.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.preprocess import Preprocessor, make_preprocessor, preprocessor_from_dict, state_problem
from fedlego.common.data.sitefolder import SiteData
from fedlego.common.data.tensors import TensorSet, fit_preprocessor, make_tensor_set, task_for
from fedlego.common.disclosure import (
    DEFAULT_MIN_CELL,
    DisclosureError,
    below_threshold,
    effective_min_cell,
    releasable,
    released_cut_points,
)
from fedlego.common.lego import LegoBlock, LegoFuse, LegoMerge
from fedlego.common.outcome_curves import outcome_curve
from fedlego.common.packaging import block_to_package
from fedlego.common.privacy import privacy_metrics
from fedlego.common.protocol import RoundReply, SiteDescription
from fedlego.common.tasks import Task
from fedlego.common.versions import software_versions
from fedlego.common.workflow import score_metrics, scores_of, train_block, unimodal_forward
from fedlego.proto.fedlego_pb2 import BlockPackage


@dataclass
class BlockResults:
    """The block packages a site trained, and why the others failed (by modality)."""

    packages: dict[str, BlockPackage] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class SiteRuntime:
    """One site's data and its patient roles (train / validation / test ids)."""

    name: str
    dataset: MultimodalDataset
    roles: dict[str, list[str]]
    source: dict[str, str] | None = None
    """Where the data came from (``SiteData.source()``; bundled data set and name otherwise)."""
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality, the encoder to use instead of the reference one (``site.json``)."""
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality, preprocessing options of this site (``site.json``), over the coordinator's."""
    evaluation_errors: dict[str, str] = field(default_factory=dict)
    """Why the models of the last ``evaluate`` that failed at this site failed, by model name."""
    evaluation_curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The releasable outcome curves of the last ``evaluate``, by model name."""
    min_cell: int = DEFAULT_MIN_CELL
    """Disclosure threshold (``common.disclosure``): fewest patients behind anything this site sends."""
    schema_sha256: str | None = None
    """The consortium schema this site's data passed (``check_schema``), reported in ``describe``."""

    @classmethod
    def from_site_data(cls, data: SiteData, run_min_cell: int = DEFAULT_MIN_CELL) -> SiteRuntime:
        """The runtime of a site folder as read; its disclosure threshold is the stricter of the
        folder's own (``site.json``) and the run's."""
        return cls(
            data.name,
            data.dataset,
            data.roles,
            data.source(),
            data.encoders,
            data.preprocessing,
            min_cell=effective_min_cell(data.min_cell, run_min_cell),
        )

    def check_schema(self, site: SiteData, path: Path) -> None:
        """Check the site's data against the consortium schema file at ``path``: every error in one
        ``SiteDataError`` naming the schema file; on success the schema's hash is what ``describe``
        reports."""
        from fedlego.common.data.schema import ConsortiumSchema, check_against_schema, schema_hash

        schema = ConsortiumSchema.read(path)
        errors = [str(p) for p in check_against_schema(site, schema) if p.severity == "error"]
        labels, unit = self.dataset.labels, schema.labels.time_unit
        if labels.task == "survival" and None not in (labels.time_unit, unit) and labels.time_unit != unit:
            errors.append(f"site.json says the survival times are in {labels.time_unit}, the schema says {unit}")
        if errors:
            raise SiteDataError(str(path), "the site's data break the consortium schema:\n  " + "\n  ".join(errors))
        if labels.task == "survival" and labels.time_unit is None:
            labels.time_unit = unit
        self.schema_sha256 = schema_hash(schema)

    def modalities(self) -> list[str]:
        """Modalities this site holds."""
        return sorted(self.dataset.modalities)

    def _ids(self, role: str, modality: str | None = None) -> list[str]:
        ids = self.roles.get(role, [])
        if modality is None:
            return ids
        holding = set(self.dataset.modalities[modality].patient_ids())
        return [i for i in ids if i in holding]

    def describe(self, n_bins: int = 4) -> SiteDescription:
        """What the site holds, in counts only (plus, for survival, its training time quantiles
        so that the coordinator can fix common time bins). Disclosure control: a count below
        ``min_cell`` is sent as 0; the events and quantiles only with ``min_cell`` training events,
        the quantiles rounded to two significant digits."""
        labels = self.dataset.labels
        counts = {
            role: [self._released(len(self._ids(role, m))) for m in self.modalities()]
            for role in ("train", "validation", "test")
        }
        description = SiteDescription(
            site=self.name,
            task=labels.task,
            n_classes=labels.n_classes,
            modalities=self.modalities(),
            kinds=[self.dataset.modalities[m].kind for m in self.modalities()],
            n_train=counts["train"],
            n_validation=counts["validation"],
            n_test=counts["test"],
            data=self.source,
            schema_sha256=self.schema_sha256,
            software=software_versions(),
            time_unit=labels.time_unit if labels.task == "survival" else None,
        )
        train = self._ids("train")
        events = int(labels.table.loc[train, "event"].sum()) if labels.task == "survival" and train else 0
        if releasable(events, self.min_cell):
            description.n_train_events = events
            description.cut_points = released_cut_points(task_for(labels, train, n_bins).cut_points)
        return description

    def _released(self, count: int) -> int:
        """A count as it may leave the site: 0 below the disclosure threshold."""
        return count if releasable(count, self.min_cell) else 0

    def outgoing(self, preprocessing_options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """What this site would send before any training, for review before a run: its description
        and, per modality, the fitted preprocessing a block package carries (column and variable
        names, categories, medians, means, spreads) or why the modality stays home."""
        states, reasons = self.released_preprocessing(preprocessing_options)
        preprocessing = {**states, **{m: {"not sent": reason} for m, reason in reasons.items()}}
        return {"min_cell": self.min_cell, "description": self.describe().to_dict(), "preprocessing": preprocessing}

    def released_preprocessing(
        self, preprocessing_options: Mapping[str, Mapping[str, Any]] | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Per modality, the fitted preprocessing state this site's block package would carry (the
        run's options under the site's own, fitted on its training patients under disclosure
        control), and, for the modalities that stay home, why."""
        options = {**(preprocessing_options or {}), **self.preprocessing}
        states, reasons = {}, {}
        for modality in self.modalities():
            try:
                state = fit_preprocessor(self.dataset, modality, self._ids("train"), options, self.min_cell)
                states[modality] = state.to_dict()
            except ValueError as error:
                reasons[modality] = str(error)
        return states, reasons

    def tensors_for(self, blocks: Mapping[str, LegoBlock], role: str) -> TensorSet:
        """A role's patients transformed with the preprocessing stored in each block; for the
        roles a round trains or validates on, what the site's disclosure control would not use is
        withheld (``trainable``)."""
        preprocessors = {}
        for modality, block in blocks.items():
            if modality in self.dataset.modalities and block.preprocessing:
                preprocessors[modality] = preprocessor_from_dict(block.preprocessing)
        dataset = self.dataset if role == "test" else self.trainable(preprocessors)
        return make_tensor_set(dataset, preprocessors, self._ids(role))

    def trainable(self, preprocessors: Mapping[str, Preprocessor]) -> MultimodalDataset:
        """This site's data as it may train with these preprocessors (its own, a round's block, a
        pooled state): per modality, what its disclosure control would not use is missing
        (``Preprocessor.withhold`` over its training patients at its min-cell), and a modality
        fewer than min-cell of its training patients hold is absent."""
        modalities = dict(self.dataset.modalities)
        for modality, preprocessor in preprocessors.items():
            holding = self._ids("train", modality)
            data = modalities[modality]
            if len(holding) < self.min_cell:
                modalities[modality] = data.subset([])
            else:
                modalities[modality] = preprocessor.withhold(data, holding, self.min_cell)
        return replace(self.dataset, modalities=modalities)

    def train_blocks(
        self,
        task: Task,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_id: str,
        preprocessing_options: Mapping[str, Mapping[str, Any]] | None = None,
        privacy: PrivacyConfig | None = None,
        pooled: Mapping[str, dict[str, Any]] | None = None,
    ) -> BlockResults:
        """One block per held modality, trained on the site's training patients holding it and
        early-stopped on its validation patients; returned as packages. With ``privacy``, DP-SGD;
        the spent budget goes into the manifest metrics (``dp_epsilon``, ``dp_delta``...). A block
        that cannot be built or trained (its encoder raises, returns a wrong shape or non-finite
        values, exceeds the parameter budget, its weights are missing) is reported in ``errors``
        with the cause; the site's other blocks still come back. A modality in ``pooled`` uses that
        preprocessing state (pooled from every site's) when it is valid, was fitted with the
        options this site would use and transforms its data; else its own. Either way the site's
        own fit decides, under disclosure control, whether the block may be trained at all."""
        options = {**(preprocessing_options or {}), **self.preprocessing}
        results = BlockResults()
        preprocessors = {}
        for modality in self.modalities():
            try:  # fitted even with a pooled state: the same disclosure checks gate the block
                own = fit_preprocessor(self.dataset, modality, self._ids("train"), options, self.min_cell)
                preprocessors[modality] = self._usable_pooled(modality, (pooled or {}).get(modality), options) or own
            except ValueError as error:  # below the disclosure threshold, or no training patient
                results.errors[modality] = f"site {self.name!r}: {outgoing_reason(error)}"
        dataset = self.trainable(preprocessors)
        train = make_tensor_set(dataset, preprocessors, self._ids("train"))
        validation = make_tensor_set(dataset, preprocessors, self._ids("validation"))
        for modality in preprocessors:
            try:
                block, report = train_block(
                    modality,
                    self.dataset.modalities[modality].kind,
                    train,
                    validation,
                    task,
                    model_config,
                    train_config,
                    preprocessors[modality].to_dict(),
                    privacy=privacy,
                    encoder=self.encoders.get(modality),
                )
                bad = [k for k, v in block.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
                if bad:
                    raise ValueError(f"training left non-finite values in {bad[:3]} (an encoder returning NaN?)")
            except Exception as error:  # one bad block must not take the site's other blocks down
                results.errors[modality] = outgoing_reason(error)
                continue
            metrics = {"best_epoch": float(report.best_epoch)}
            if not self._outcomes_releasable(task, validation.restrict([modality])):
                block.validation_score = None  # a metric over a handful of validation patients stays here
            elif report.best_validation_loss is not None:
                metrics["validation_loss"] = report.best_validation_loss
            metrics.update(privacy_metrics(report))
            results.packages[modality] = block_to_package(block, task, site=self.name, run_id=run_id, metrics=metrics)
        return results

    def _usable_pooled(
        self, modality: str, state: dict[str, Any] | None, options: Mapping[str, Mapping[str, Any]]
    ) -> Preprocessor | None:
        """The pooled preprocessing state of ``modality`` as a preprocessor if this site can use it,
        else None (the site's log says why, and the site fits its own)."""
        if state is None:
            return None
        data = self.dataset.modalities[modality]
        wanted = make_preprocessor(data.kind, **dict(options.get(modality, {}))).state["options"]
        problem = state_problem(state)
        if problem is None and not isinstance(state.get("fit"), dict):
            problem = "the state is not fitted"
        if problem is None and (state["kind"] != data.kind or state["options"] != wanted):
            problem = f"it is a {state['kind']} state fitted with {state['options']}, this site's is {wanted}"
        if problem is None:
            try:
                preprocessor = preprocessor_from_dict(state)
                preprocessor.transform(data, self._ids("train", modality))
                return preprocessor
            except Exception as error:  # another party's state: whatever fails leaves the site its own
                problem = f"{type(error).__name__}: {error}"
        print(
            f"fedlego site {self.name}: {modality}: not using the pooled preprocessing ({problem}); fitting its own",
            file=sys.stderr,
            flush=True,
        )
        return None

    def block_round(
        self, block: LegoBlock, task: Task, train_config: TrainConfig, proximal_mu: float = 0.0
    ) -> RoundReply:
        """One FedAvg/FedProx round on a block received from the coordinator: its validation
        loss as received, then ``train_config.epochs`` local epochs (0: evaluate only) on this
        site's training patients with the block's shared preprocessing."""
        train = self.tensors_for({block.modality: block}, "train").restrict([block.modality])
        validation = self.tensors_for({block.modality: block}, "validation").restrict([block.modality])
        self._refuse_small_training(train, f"block {block.modality}")
        result = local_round(block, train, validation, task, train_config, proximal_mu, unimodal_forward(block))
        self._withhold_small_validation(result, task, validation)
        adapter = set(block.adapter_state_dict())  # a frozen encoder never travels back
        result.state = {k: v for k, v in result.state.items() if k in adapter}
        return result

    def fuse_round(
        self, model: LegoFuse, task: Task, train_config: TrainConfig, proximal_mu: float = 0.0
    ) -> RoundReply:
        """One round of federated LegoFuse on this site's paired training patients (holding at
        least two of the model's modalities); the returned state holds the fusion parameters only."""
        train = paired_rows(self.tensors_for(model.blocks, "train"))
        validation = paired_rows(self.tensors_for(model.blocks, "validation"))
        self._refuse_small_training(train, "the fused model")
        result = local_round(
            model, train, validation, task, train_config, proximal_mu, model, penalty=model.anchor_penalty
        )
        self._withhold_small_validation(result, task, validation)
        trainable = set(model.fusion_state_dict())
        result.state = {k: v for k, v in result.state.items() if k in trainable}
        return result

    def _outcomes_releasable(self, task: Task, data: TensorSet) -> bool:
        """Whether a metric or loss over ``data`` may leave the site: at least ``min_cell`` patients,
        ``min_cell`` events and ``min_cell`` others (survival), or ``min_cell`` of each class (its
        pair counts would otherwise tell how many patients had the rarer outcome)."""
        if not releasable(len(data), self.min_cell):
            return False
        events = task.events(data.targets)
        others = len(data) - events if task.kind == "survival" else events
        return releasable(events, self.min_cell) and releasable(others, self.min_cell)

    def _refuse_small_training(self, train: TensorSet, what: str) -> None:
        """A round on fewer than ``min_cell`` training patients would send their count and an update
        shaped by a handful of them: refused, naming the threshold only."""
        if not releasable(len(train), self.min_cell):
            raise DisclosureError(self.name, f"{what}: {below_threshold('training patients', self.min_cell)}")

    def _withhold_small_validation(self, reply: RoundReply, task: Task, validation: TensorSet) -> None:
        """Disclosure control of a round reply: the validation loss, its patients and events only
        when their outcomes may leave the site (``_outcomes_releasable``); else NaN and weight 0.
        The training events only from min-cell on (else 0)."""
        if not self._outcomes_releasable(task, validation):
            reply.validation_loss_before, reply.n_validation, reply.validation_events = float("nan"), 0, None
        if not releasable(reply.train_events, self.min_cell):
            reply.train_events = 0

    def evaluate(self, models: Mapping[str, nn.Module], task: Task) -> dict[str, dict[str, float]]:
        """Each model on this site's test patients holding at least one modality it accepts
        (single blocks: patients holding that block's modality). A model with fewer than ``min_cell``
        such patients, events or others is not reported (disclosure control). A model that fails here (bad
        preprocessing state, an encoder error) is left out with the reason in ``evaluation_errors``. The
        merged and fused models' releasable outcome curves go to ``evaluation_curves``
        (``fedlego.common.outcome_curves``)."""
        results, self.evaluation_errors, self.evaluation_curves = {}, {}, {}
        for name, model in models.items():
            blocks = {model.modality: model} if isinstance(model, LegoBlock) else dict(model.blocks)
            usable = [m for m in blocks if m in self.dataset.modalities]
            if not usable:
                continue
            try:
                test = self.tensors_for({m: blocks[m] for m in usable}, "test").restrict(usable)
                if not self._outcomes_releasable(task, test):  # none, or a metric over a handful: not sent
                    continue
                forward = unimodal_forward(model) if isinstance(model, LegoBlock) else None
                scores = scores_of(model, test, task, forward)
                results[name] = score_metrics(scores, test, task)
                curve = (
                    None if isinstance(model, LegoBlock) else outcome_curve(scores, test.targets, task, self.min_cell)
                )
                if curve is not None:  # the merged and fused models only
                    self.evaluation_curves[name] = curve
            except Exception as error:  # one model that cannot run here must not hide the others
                self.evaluation_errors[name] = outgoing_reason(error)
        return results


def outgoing_reason(error: Exception) -> str:
    """An error as the coordinator may read it. A data error names the file and column only (its
    rows are patient ids and its message may quote values; the whole error goes to the site's own
    log); a disclosure refusal is said in full (it holds the threshold, never a count); other errors
    (an encoder that raised, a wrong shape) by type and message."""
    if isinstance(error, DisclosureError):
        return f"{type(error).__name__}: {error.message}"
    if isinstance(error, SiteDataError):
        print(f"fedlego site: {error}", file=sys.stderr, flush=True)
        return error.public_reason()
    return f"{type(error).__name__}: {error}"


def evaluable_models(
    blocks: Mapping[str, LegoBlock], merged: LegoMerge | None, fused: LegoFuse | None
) -> dict[str, nn.Module]:
    """The named models a site is asked to evaluate after a phase."""
    models: dict[str, nn.Module] = {f"block:{m}": b for m, b in blocks.items()}
    if merged is not None:
        models["merge"] = merged
    if fused is not None:
        models["fuse"] = fused
    return models
