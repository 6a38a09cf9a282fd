"""Server optimizers (FedAdam, FedYogi, FedAdagrad) against Flower's own strategies, and rounds
that stop once the pooled validation loss stops improving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdagrad, FedAdam, FedYogi

from fedlego.common.aggregation import SERVER_OPTIMIZERS, average_states
from fedlego.common.config import RunConfig
from fedlego.common.protocol import RoundReply
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation
from fedlego.server.rounds import Round, Rounds

FLOWER = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}
SETTINGS = {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2}


def client_states(generator: np.random.Generator, n_clients: int = 3) -> list[dict[str, np.ndarray]]:
    return [{"w": generator.normal(size=(4, 3)), "b": generator.normal(size=3)} for _ in range(n_clients)]


@pytest.mark.parametrize("name", sorted(FLOWER))
def test_each_adaptive_optimizer_takes_the_steps_flowers_strategy_takes(name):
    generator = np.random.default_rng(0)
    start = {"w": generator.normal(size=(4, 3)), "b": generator.normal(size=3)}
    settings = dict(SETTINGS)
    moments = {"beta_1": settings["beta1"], "beta_2": settings["beta2"]}
    if name == "fedadagrad":  # Flower's FedAdagrad keeps no momentum (beta1 = 0)
        settings["beta1"], moments = 0.0, {}
    flower = FLOWER[name](
        initial_parameters=ndarrays_to_parameters([start["w"], start["b"]]),
        eta=settings["lr"],
        tau=settings["tau"],
        **moments,
    )
    ours = SERVER_OPTIMIZERS[name](**settings)
    current = {k: torch.tensor(v) for k, v in start.items()}
    for server_round in (1, 2, 3):
        clients, sizes = client_states(generator), [10, 30, 20]
        results = [
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([c["w"], c["b"]]), n, {}))
            for c, n in zip(clients, sizes, strict=True)
        ]
        expected = parameters_to_ndarrays(flower.aggregate_fit(server_round, results, [])[0])
        aggregate = average_states([{k: torch.tensor(v) for k, v in c.items()} for c in clients], sizes)
        current = ours.step(current, aggregate)
        np.testing.assert_allclose(current["w"].numpy(), expected[0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(current["b"].numpy(), expected[1], rtol=1e-6, atol=1e-9)


def test_fedavg_takes_the_aggregate_and_an_optimizer_resumes_from_its_state():
    sent = {"w": torch.zeros(3), "steps": torch.tensor(4)}
    aggregate = {"w": torch.ones(3), "steps": torch.tensor(5)}
    assert SERVER_OPTIMIZERS["fedavg"]().step(sent, aggregate) == aggregate
    first, second = SERVER_OPTIMIZERS["fedyogi"](), SERVER_OPTIMIZERS["fedyogi"]()
    first.step(sent, aggregate)
    second.load(first.state())
    after = {"w": torch.full((3,), 2.0), "steps": torch.tensor(6)}
    torch.testing.assert_close(first.step(aggregate, after), second.step(aggregate, after))
    assert first.step(aggregate, after)["steps"] == 6  # integer buffers take the aggregate's value


def replies(loss: float, norms: tuple[float, ...] = (1.0, 1.0)) -> dict[int, RoundReply]:
    return {
        node: RoundReply({"w": torch.full((1,), norm)}, 10, loss, n_validation=5) for node, norm in enumerate(norms)
    }


def test_rounds_stop_once_patience_rounds_fail_to_beat_the_best():
    losses = iter([1.0, 0.8, 0.85, 0.9, 0.5, 0.4])
    seen: list[Round] = []
    rounds = Rounds(5, [{"w": torch.zeros(1)}], patience=2)
    rounds.run([0, 1], lambda i, final, s: None, lambda requests: replies(next(losses)), seen.append)
    assert rounds.history == [1.0, 0.8, 0.85, 0.9] and rounds.stopped_early
    assert len(rounds.states) == len(rounds.history) and rounds.best() == 1
    assert seen[-1].stopped and seen[-1].final and not any(r.stopped for r in seen[:-1])
    resumed = Rounds(5, list(rounds.states), list(rounds.history), patience=2)
    resumed.run([0, 1], lambda i, final, s: None, lambda requests: pytest.fail("no round after a stop"), seen.append)
    assert resumed.stopped_early and resumed.history == rounds.history


def test_without_patience_every_round_of_the_budget_runs():
    rounds = Rounds(3, [{"w": torch.zeros(1)}])
    rounds.run([0, 1], lambda i, final, s: None, lambda requests: replies(1.0), lambda finished: None)
    assert len(rounds.history) == 4 and not rounds.stopped_early


def test_a_site_whose_update_is_far_from_the_others_is_named():
    seen: list[Round] = []
    rounds = Rounds(1, [{"w": torch.zeros(1)}])
    rounds.run([0, 1, 2, 3], lambda i, final, s: None, lambda r: replies(1.0, (1.0, 1.2, 0.9, 8.0)), seen.append)
    assert seen[0].update_norms[3] == pytest.approx(8.0) and set(seen[0].far_nodes()) == {3}
    assert seen[1].final and seen[1].far_nodes() == {}  # the evaluate-only round trains nothing


def test_a_federation_with_fedyogi_and_patience_completes_and_records_its_rounds():
    config = {
        "dataset": "synthetic",
        "synthetic-patients": 150,
        "synthetic-modalities": 2,
        "latent-channels": 8,
        "latent-dim": 16,
        "block-epochs": 2,
        "patience": 1,
        "block-rounds": 6,
        "fuse-rounds": 6,
        "round-patience": 1,
        "server-optimizer": "fedyogi",
        "min-cell": 1,
    }
    results = Federation(InProcessTransport(config, 3), RunConfig.from_flat(config), log=lambda _: None).run()
    assert results.status == "completed", results.error
    for record in results.rounds.values():
        assert len(record.validation_loss) <= 7
        if record.stopped_early:
            assert len(record.validation_loss) < 7


def test_without_any_validation_loss_the_start_or_the_last_round_is_kept_as_configured():
    nan = float("nan")
    for unvalidated, kept in (("start", 0), ("last", 3)):
        rounds = Rounds(3, [{"w": torch.zeros(1)}], patience=1, unvalidated=unvalidated)
        rounds.run([0, 1], lambda i, final, s: None, lambda requests: replies(nan), lambda finished: None)
        assert rounds.best() == kept
        assert rounds.stopped_early == (unvalidated == "start")  # nothing to stop on: the budget runs
