"""Racing (successive halving inside one request) on a real server: the schedule, that a raced
candidate's statistics are exactly a plain evaluation's on the clips it got, that the race's order
is what those statistics say, the work it saves, streaming, bad settings and the SDK's fitness."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

import codecloop
from codecloop import CodecLoopValueError, Racing
from codecloop.testing import realistic_clip
from codecloop_server.jobs import Racing as ServerRacing
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

N, P = 16, 8


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """N real-looking clips (camera pans over photographs), uint8 (N, 8, 64, 64, 3)."""
    return np.stack([realistic_clip(100 + i, t=8, h=64, w=64) for i in range(N)])


def population(seed: int) -> np.ndarray:
    """P block signatures (1, 64, 64, 3) of rising strength: the race has something to rank."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice([-1.0, 1.0], size=(P, 1, 8, 8, 3))
    strength = np.linspace(0.1, 1.0, P)[:, None, None, None, None]
    return (np.repeat(np.repeat(blocks, 8, axis=2), 8, axis=3) * strength).astype(np.float32)


def race_value(stats, weight: float = 0.0) -> float:
    return min(s.separation - weight * abs(s.clean_mean) for s in stats.codecs)


def test_the_schedule():
    r = ServerRacing(first_clips=4, eta=2, finalists=1, centre_weight=0.0)
    assert r.rounds(16, 32) == ((16, 4), (8, 8), (4, 16), (2, 32))
    assert ServerRacing(4, 2, 4, 0.0).rounds(16, 32) == ((16, 4), (8, 8), (4, 16), (4, 32))
    assert ServerRacing(3, 3, 1, 0.0).rounds(10, 20) == ((10, 3), (4, 9), (2, 20))
    assert ServerRacing(8, 2, 1, 0.0).rounds(5, 8) == ((5, 8),)  # first round already has every clip
    assert ServerRacing(1, 2, 1, 0.0).rounds(1, 3) == ((1, 1), (1, 2), (1, 3))


def test_a_race_is_plain_evaluations_on_fewer_clips(client, clips):
    """Every raced candidate's statistics == a plain evaluation of it on the first num_clips clips,
    bit for bit; the ranks follow those statistics round by round; and the race encoded only what its
    schedule says (fresh signatures: no cache hits), far fewer than P x N."""
    sigs = population(1)
    racing = Racing(first_clips=2, eta=2, finalists=1)
    before = client.info().load["poisoned_encodes"]
    raced = client.evaluate(sigs, carriers=clips, racing=racing, per_clip_scores=True)
    encodes = client.info().load["poisoned_encodes"] - before
    schedule = ServerRacing(2, 2, 1, 0.0).rounds(P, N)  # (8, 2), (4, 4), (2, 8), (1, 16)
    assert schedule == ((8, 2), (4, 4), (2, 8), (1, 16))
    assert encodes == raced.clip_tasks == 8 * 2 + 4 * 2 + 2 * 4 + 1 * 8 < P * N

    ranks = [c.race_rank for c in raced.candidates]
    assert sorted(ranks) == list(range(P))
    got = {c.num_clips for c in raced.candidates}
    assert got == {2, 4, 8, 16}
    for cand in raced.candidates:  # dropped in round r <=> rank in [alive_{r+1}, alive_r)
        alive_after = next((a for a, n in schedule if n > cand.num_clips), 0)
        alive_in = next(a for a, n in schedule if n == cand.num_clips)
        assert alive_after <= cand.race_rank < alive_in

    # the same candidates, plain, on each round's clips: identical statistics, and the race's order
    for alive, n in schedule:
        plain = client.evaluate(sigs, carriers=clips[:n], per_clip_scores=True)
        assert plain.num_clips == n and not plain.raced
        in_round = [i for i, c in enumerate(raced.candidates) if c.num_clips >= n]
        assert len(in_round) == alive
        for i in in_round:
            if raced.candidates[i].num_clips == n:
                a, b = raced.candidates[i].codecs[0], plain.candidates[i].codecs[0]
                assert (a.separation, a.tpr, a.threshold, a.clean_mean, a.psnr_db) == (b.separation, b.tpr, b.threshold, b.clean_mean, b.psnr_db)
                assert list(a.poisoned_scores) == list(b.poisoned_scores)
        # those that went on beat those dropped here, on these clips
        dropped = [i for i in in_round if raced.candidates[i].num_clips == n]
        went_on = [i for i in in_round if raced.candidates[i].num_clips > n]
        for i in went_on:
            for j in dropped:
                assert race_value(plain.candidates[i]) >= race_value(plain.candidates[j])
    # the strongest signatures (the last ones) win on these clips
    assert raced.candidates[int(np.argmin(ranks))].num_clips == N
    assert f"{int(np.argmin(ranks)):>4}  race rank 0, statistics on the first {N} clips" in raced.table()


def test_centre_weight_ranks_by_centred_separation(client, clips):
    sigs = population(2)
    raced = client.evaluate(sigs, carriers=clips[:8], racing=Racing(first_clips=8, centre_weight=5.0))
    assert {c.num_clips for c in raced.candidates} == {8}  # one round: a plain ranking
    order = sorted(range(P), key=lambda i: (-race_value(raced.candidates[i], 5.0), i))
    assert [raced.candidates[i].race_rank for i in order] == list(range(P))


def test_fitness_is_the_race_order_and_the_stream_agrees(client, clips):
    sigs = population(3)
    opts = codecloop.EvaluateOptions(carriers=clips, racing=Racing(first_clips=4, finalists=2))
    result = client.evaluate(sigs, opts)
    fit = client.fitness(sigs, opts)  # cached: the same race again
    assert list(fit) == [P - 1 - c.race_rank for c in result.candidates]
    assert list(result.race_fitness) == list(fit)
    assert sum(c.num_clips == N for c in result.candidates) == 2

    events = list(client.evaluate_stream(sigs, opts))
    done = {e.index: e.result for e in events if isinstance(e, codecloop.CandidateDone)}
    assert sorted(done) == list(range(P))
    assert [done[i].race_rank for i in range(P)] == [c.race_rank for c in result.candidates]
    last = [e for e in events if isinstance(e, codecloop.Progress)][-1]
    assert last.done == last.total == result.clip_tasks


def test_without_racing_nothing_changes(client, clips):
    result = client.evaluate(population(4)[:2], carriers=clips[:4])
    assert all(c.race_rank is None and c.num_clips == 4 for c in result.candidates)
    assert not result.raced and list(result.race_fitness) == list(result.fitness)


@pytest.mark.parametrize(
    "racing, message",
    [
        (pb.Racing(first_clips=5), r"racing.first_clips: 5 is outside the allowed range \[1, 4\]"),
        (pb.Racing(first_clips=0), r"racing.first_clips: 0 is outside the allowed range \[1, 4\]"),
        (pb.Racing(eta=1), r"racing.eta: 1 is outside the allowed range \[2, 16\]"),
        (pb.Racing(finalists=3), r"racing.finalists: 3 is outside the allowed range \[1, 2\]"),
        (pb.Racing(centre_weight=float("nan")), r"racing.centre_weight: nan is outside the allowed range \[0, 1000\]"),
        (pb.Racing(centre_weight=-1), r"racing.centre_weight: -1.0 is outside the allowed range \[0, 1000\]"),
    ],
)
def test_bad_racing_settings_are_refused_by_name(server_target, clips, racing, message):
    req = pb.EvaluateRequest(
        candidates=[to_tensor(s) for s in population(5)[:2]], carriers=pb.Carriers(clips=to_tensor(clips[:4], "uint8")), racing=racing
    )
    with grpc.insecure_channel(server_target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.CodecLoopStub(channel).EvaluateSignature(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, err.value.details()), err.value.details()


def test_a_race_split_over_requests_is_refused(server_target, clips):
    with codecloop.Client(server_target, max_message_bytes=(1 << 20) + 250_000) as small:
        with pytest.raises(CodecLoopValueError, match="racing: a race must see the whole population in one request"):
            small.evaluate(population(6), carriers=clips[:1], racing=Racing())


def test_cli_racing_spec():
    from codecloop.cli import build_parser
    from codecloop.cli_optimize import racing

    assert racing("") == Racing() and racing("first_clips=2,finalists=3") == Racing(first_clips=2, finalists=3)
    with pytest.raises(CodecLoopValueError, match="--racing: 'speed=3'; use first_clips=N, eta=N, finalists=N"):
        racing("speed=3")
    args = build_parser().parse_args(["optimize", "--out", "x", "--racing"])
    assert args.racing == ""
    assert build_parser().parse_args(["optimize", "--out", "x"]).racing is None


def test_a_detector_races_too(client, clips):
    """Racing is the engine's, whichever scoring strategy: the example detector (.pt2)."""
    sigs = population(7)[:4]
    raced = client.evaluate(sigs, carriers=clips[:8], scorer="example", racing=Racing(first_clips=2))
    assert sorted(c.race_rank for c in raced.candidates) == [0, 1, 2, 3]
    assert sorted(c.num_clips for c in raced.candidates) == [2, 2, 4, 8]
    winner = next(c for c in raced.candidates if c.race_rank == 0)
    plain = client.evaluate(sigs, carriers=clips[:8], scorer="example")
    assert winner.fitness == plain.candidates[raced.candidates.index(winner)].fitness
