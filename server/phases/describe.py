"""Describe: every site reports what it holds (counts only), the run agrees on its task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlego.common.data.preprocess import make_preprocessor, pooled_state, state_problem
from fedlego.common.data.presets import preprocessing_for
from fedlego.common.protocol import DescribeRequest, SiteDescription
from fedlego.common.tasks import task_from_dict
from fedlego.common.versions import software_versions, version_mismatch
from fedlego.server.checks import agree_task
from fedlego.server.exchange import FederationError
from fedlego.server.phases.base import Phase
from fedlego.server.results import Failure

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation


class DescribePhase(Phase):
    """Sites whose data were checked against another consortium schema are refused here."""

    name = "describe"
    checkpointed = False  # node ids belong to this attempt's connections: every attempt asks again

    def run(self, federation: Federation) -> None:
        results = federation.results
        nodes = federation.wait_for_sites()
        federation.log("phase describe")
        pooling = federation.settings.rounds.shared_preprocessing == "pooled"
        request = DescribeRequest(preprocessing_for(federation.settings) if pooling else None)
        answered = federation.exchange("describe", dict.fromkeys(nodes, request))
        fitted: dict[str, list[tuple[SiteDescription, dict[str, Any]]]] = {}
        traffic = results.phase("describe").bytes
        schema = self._schema_sha256(federation)
        ours = software_versions()
        for node, reply in answered.items():
            description = reply.description
            traffic[description.site] = traffic.pop(f"node-{node}")
            federation.exchange.site_names[node] = description.site
            reason = version_mismatch(description.site, description.software, ours)
            if reason is None and schema is not None and description.schema_sha256 != schema:
                checked = f"schema {description.schema_sha256[:12]}" if description.schema_sha256 else "no schema"
                reason = f"the site checked its data against {checked}, the run's consortium schema is {schema[:12]}"
            if reason is not None:
                results.failures.append(Failure(description.site, "describe", reason))
                federation.recorder.audit("site-refused", site=description.site, reason=reason)
                federation.log(f"  describe: {description.site} refused: {reason}")
                continue
            federation.sites[node] = description
            for modality, state in reply.preprocessing.items():
                fitted.setdefault(modality, []).append((description, state))
            results.sites[description.site] = {k: v for k, v in description.to_dict().items() if k != "cut_points"}
        if pooling:
            self._pooled(federation, fitted)
        results.data = {d.site: d.data for d in federation.sites.values() if d.data is not None} or None
        if not federation.sites:
            reasons = "; ".join(f"{f.site}: {f.reason}" for f in results.failures if f.phase == "describe")
            raise FederationError("no site is left after the describe phase" + (f" ({reasons})" if reasons else ""))
        task = agree_task(list(federation.sites.values()), note=lambda text: federation.log(f"  describe: {text}"))
        if results.task is not None:  # resumed: the finished phases' blocks were trained on the run's task
            kept = task_from_dict(results.task)
            if kept.kind != task.kind:
                raise FederationError(f"the sites now describe a {task.kind} task, the run was {kept.kind}")
            if kept != task:
                federation.log("  describe: keeping the run's task from before the restart (the sites present differ)")
            task = kept
        results.task = task.to_dict()
        results.metric = task.metric_name
        federation.models.task = task

    @staticmethod
    def _pooled(federation: Federation, fitted: dict[str, list[tuple[SiteDescription, dict[str, Any]]]]) -> None:
        """Per modality that two or more accepted sites sent usable preprocessing statistics for
        (``_unpoolable``), the state pooled from them, each weighed by its released training
        patients, the largest first, into ``federation.models``; a state left out is logged, and a
        modality whose states cannot be pooled leaves each site its own."""
        options = preprocessing_for(federation.settings)
        models = federation.models
        models.pooled_preprocessing, models.pooled_sites = {}, {}
        for modality, sent in sorted(fitted.items()):
            usable = []
            for description, state in sent:
                problem = _unpoolable(description, modality, state, options.get(modality, {}))
                if problem is None:
                    patients = description.n_train[description.modalities.index(modality)]
                    usable.append((patients, description.site, state))
                else:
                    federation.log(f"  describe: {description.site}/{modality}: statistics not pooled: {problem}")
            if len(usable) < 2:
                continue
            usable.sort(key=lambda entry: (-entry[0], entry[1]))
            sites = [entry[1] for entry in usable]
            try:
                state = pooled_state([entry[2] for entry in usable], [entry[0] for entry in usable])
            except (TypeError, ValueError, KeyError, IndexError) as error:  # states checked; kept as a last guard
                state = None
                federation.log(f"  describe: {modality}: pooling failed ({type(error).__name__}: {error})")
            if state is None:
                federation.log(
                    f"  describe: {modality}: the preprocessing of {', '.join(sites)} cannot be pooled "
                    "(other shapes, or a kind without a pooling rule): each site fits its own"
                )
                continue
            models.pooled_preprocessing[modality] = state
            models.pooled_sites[modality] = sites
            federation.log(f"  describe: {modality}: preprocessing pooled from {len(sites)} sites")

    @staticmethod
    def _schema_sha256(federation: Federation) -> str | None:
        """The SHA-256 of the run's consortium schema (``schema`` key), recorded in the results."""
        path = federation.settings.coordinator.schema
        if not path:
            return None
        from fedlego.common.data.schema import ConsortiumSchema, schema_hash

        schema = ConsortiumSchema.read(path)
        federation.results.schema_sha256 = schema_hash(schema)
        federation.results.outcome = schema.labels.outcome
        return federation.results.schema_sha256


def _unpoolable(
    description: SiteDescription, modality: str, state: dict[str, Any], options: dict[str, Any]
) -> str | None:
    """Why a site's preprocessing state of ``modality`` cannot enter the pool, or None: a modality
    it did not describe or released no training count for, a state that breaks its kind's schema
    or is unfitted, of another kind than described, or fitted with other options than the run's
    ``options`` (a site.json override: that site trains with its own)."""
    if modality not in description.modalities:
        return "the site did not describe this modality"
    index = description.modalities.index(modality)
    if description.n_train[index] <= 0:
        return "the site released no training count for it"
    problem = state_problem(state)
    if problem is None and not isinstance(state.get("fit"), dict):
        problem = "the state is not fitted"
    if problem is None and state["kind"] != description.kinds[index]:
        problem = f"a {state['kind']} state for {description.kinds[index]} data"
    if problem is None:
        try:
            wanted = make_preprocessor(state["kind"], **options).state["options"]
        except (TypeError, ValueError) as error:
            return f"the run's options do not fit its kind ({error})"
        if state["options"] != wanted:
            problem = f"fitted with other options ({state['options']}) than the run's ({wanted}): it keeps its own"
    return problem
