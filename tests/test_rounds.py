"""The round driver (server/rounds.py) on its own: which rounds run, what each sends and aggregates,
lost sites, resuming mid-rounds, and the kept round (ties, NaN)."""

import math

import pytest
import torch

from fedlego.common.config import TrainConfig
from fedlego.common.protocol import MessageType, RoundReply, RoundRequest
from fedlego.common.tasks import ClassificationTask
from fedlego.common.training import EarlyStopping, TrainReport
from fedlego.server.exchange import FederationError
from fedlego.server.rounds import Rounds


class Sites:
    """Answers every request with its node id as the parameters and ``losses[round]`` as the validation
    loss, weighted by ``node`` samples; nodes in ``lost`` (from round ``lost_from`` on) do not answer."""

    def __init__(self, losses: list[float], lost: frozenset[int] = frozenset(), lost_from: int = 0) -> None:
        self.losses, self.lost, self.lost_from = losses, lost, lost_from
        self.asked: list[tuple[int, list[int]]] = []

    def exchange(self, requests: dict[int, RoundRequest]) -> dict[int, RoundReply]:
        index = next(iter(requests.values())).round
        self.asked.append((index, sorted(requests)))
        return {
            node: RoundReply({"w": torch.tensor([float(node)])}, node, self.losses[index] * node)
            for node in requests
            if not (node in self.lost and index >= self.lost_from)
        }


def request(index: int, final: bool, state: dict[str, torch.Tensor]) -> RoundRequest:
    training = TrainConfig().for_round(0 if final else 1)
    return RoundRequest(MessageType.FUSE_ROUND, "run", index, ClassificationTask(2), training, state=dict(state))


def test_rounds_send_the_last_state_aggregate_by_samples_and_evaluate_last():
    sites, finished = Sites([1.0, 0.5, 2.0]), []
    rounds = Rounds(2, [{"w": torch.tensor([0.0])}])
    rounds.run([1, 3], request, sites.exchange, finished.append)
    assert sites.asked == [(0, [1, 3]), (1, [1, 3]), (2, [1, 3])]
    assert [(r.index, r.final) for r in finished] == [(0, False), (1, False), (2, True)]
    assert len(rounds.states) == 3  # the evaluate-only round adds none
    torch.testing.assert_close(rounds.states[1]["w"], torch.tensor([2.5]))  # (1 * 1 + 3 * 3) / 4
    assert rounds.history == pytest.approx([2.5, 1.25, 5.0])  # losses weighted by samples
    assert rounds.best() == 1


@pytest.mark.parametrize(("drop_lost", "last_cohort"), [(False, [1, 3]), (True, [1])])
def test_lost_sites_are_asked_again_unless_dropped(drop_lost: bool, last_cohort: list[int]):
    sites, asked = Sites([1.0, 1.0, 1.0], lost=frozenset({3}), lost_from=1), []
    rounds = Rounds(2, [{"w": torch.tensor([0.0])}])

    def aggregate(reference, answered, counts, n_asked):
        asked.append(n_asked)
        return {"w": reference["w"] + 1}

    rounds.run([1, 3], request, sites.exchange, lambda _: None, aggregate=aggregate, drop_lost=drop_lost)
    assert sites.asked == [(0, [1, 3]), (1, [1, 3]), (2, last_cohort)]
    assert asked == [2, 2]  # the sites asked, answered or not
    torch.testing.assert_close(rounds.states[-1]["w"], torch.tensor([2.0]))


def test_a_resumed_run_continues_after_the_last_finished_round():
    states = [{"w": torch.tensor([float(i)])} for i in range(3)]  # start, after round 0, after round 1
    rounds = Rounds(3, states, history=[4.0, 3.0])
    sites, finished = Sites([0.0, 0.0, 2.0, 1.0]), []
    sent: list[torch.Tensor] = []

    def remember(index: int, final: bool, state: dict[str, torch.Tensor]) -> RoundRequest:
        sent.append(state["w"])
        return request(index, final, state)

    rounds.run([1], remember, sites.exchange, finished.append)
    assert [r.index for r in finished] == [2, 3] and sites.asked == [(2, [1]), (3, [1])]
    assert sent[0].item() == 2.0  # round 2 starts from what round 1 produced
    assert rounds.history == [4.0, 3.0, 2.0, 1.0] and len(rounds.states) == 4 and rounds.best() == 3


def test_the_kept_round_is_the_earliest_lowest_and_never_nan():
    def best(history: list[float]) -> int:
        return Rounds(len(history) - 1, [], history=history).best()

    assert best([math.nan, 0.5, 0.5, 0.7]) == 1
    assert best([0.9, math.nan, 0.2]) == 2
    assert best([math.nan, math.nan]) == 0


def test_a_later_round_replaces_the_start_only_by_the_margin():
    def best(history: list[float], margin: float) -> int:
        return Rounds(len(history) - 1, [], history=history).best(margin)

    assert best([1.0, 0.995, 0.999], 0.01) == 0  # 0.5 % better: noise, the start (the merge) stays
    assert best([1.0, 0.995, 0.98], 0.01) == 2
    assert best([1.0, 0.98, 0.97], 0.01) == 2  # past the margin, the lowest wins
    assert best([1.0, 0.995], 0.0) == 1
    assert best([math.nan, 0.8], 0.5) == 1  # no usable start: any finite round


def test_early_stopping_leaves_the_untrained_model_only_by_the_margin():
    model = torch.nn.Linear(2, 1)
    report = TrainReport(best_epoch=0, best_validation_loss=None)
    stopping = EarlyStopping(model, report, patience=5, margin=0.01)
    stopping.update(2.0, epoch=0)
    stopping.update(1.99, epoch=1)  # 0.5 %: not enough
    assert report.best_epoch == 0
    stopping.update(1.97, epoch=2)
    assert report.best_epoch == 2
    stopping.update(1.969, epoch=3)  # once fine-tuned, any improvement counts
    assert report.best_epoch == 3


def test_a_rounds_loss_is_the_mean_over_every_validation_patient():
    """A site with many training but few validation patients weighs by its validation patients; a
    site that does not say how many makes the round fall back to training patients."""

    def exchange_with(n_validation: dict[int, int | None]):
        def exchange(requests: dict[int, RoundRequest]) -> dict[int, RoundReply]:
            loss = {1: 1.0, 2: 4.0}
            return {n: RoundReply({"w": torch.zeros(1)}, 100 * n, loss[n], n_validation[n], 1) for n in requests}

        return exchange

    rounds = Rounds(0, [{"w": torch.zeros(1)}])
    rounds.run([1, 2], request, exchange_with({1: 30, 2: 10}), lambda _: None)
    assert rounds.history == pytest.approx([(30 * 1.0 + 10 * 4.0) / 40])
    fallback = Rounds(0, [{"w": torch.zeros(1)}])
    fallback.run([1, 2], request, exchange_with({1: 30, 2: None}), lambda _: None)
    assert fallback.history == pytest.approx([(100 * 1.0 + 200 * 4.0) / 300])


def test_rounds_whose_sites_vanish_stop_keeping_the_best_finished_round():
    def exchange(requests: dict[int, RoundRequest]) -> dict[int, RoundReply]:
        if next(iter(requests.values())).round >= 2:
            raise FederationError("phase fuse: only 0 of 1 sites answered, 1 needed")
        return Sites([3.0, 1.0]).exchange(requests)

    rounds, finished = Rounds(4, [{"w": torch.tensor([0.0])}]), []
    rounds.run([1], request, exchange, finished.append)
    assert [r.index for r in finished] == [0, 1] and rounds.history == [3.0, 1.0]
    assert rounds.cut_short == "round 2: phase fuse: only 0 of 1 sites answered, 1 needed"
    assert rounds.best() == 1 and len(rounds.states) == 3  # the round-1 update was never validated


def test_rounds_that_no_site_ever_answered_are_the_callers_error():
    def exchange(requests: dict[int, RoundRequest]) -> dict[int, RoundReply]:
        raise FederationError("phase fuse: only 0 of 2 sites answered, 1 needed")

    with pytest.raises(FederationError, match="only 0 of 2"):
        Rounds(2, [{"w": torch.tensor([0.0])}]).run([1, 3], request, exchange, lambda _: None)
