"""``codecloop diagnose``: the seed's table, computed for the proxy (each rounding mode) and for the
real codec side by side, plus how well the proxy ranks signatures the way the real codec does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

from codecloop.client import Client
from codecloop.torch_proxy import ROUNDING, H264Proxy, blind_scores, poison
from codecloop.types import Codec, DatasetCarriers
from codecloop_wire import defaults, stats


@dataclass(frozen=True)
class Row:
    name: str
    stats: dict


def random_signatures(n: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """n random +-1 static signatures (n, 1, H, W, 3) with block sizes cycling 1, 2, 4, 8, 16."""
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for i in range(n):
        b = (1, 2, 4, 8, 16)[i % 5]
        small = rng.choice([-1.0, 1.0], size=(1, -(-h // b), -(-w // b), 1 if i % 2 else 3))
        sig = np.repeat(np.repeat(small, b, axis=1), b, axis=2)[:, :h, :w]
        out.append(np.broadcast_to(sig, (1, h, w, 3)))
    return np.stack(out).astype(np.float32)


def proxy_scores(
    clean: torch.Tensor, clean_coded: torch.Tensor, sig: np.ndarray, epsilon: float, proxy: H264Proxy
) -> tuple[np.ndarray, np.ndarray]:
    """(clean, poisoned) blind scores after the proxy; ``clean_coded`` is ``proxy(clean)``, computed once."""
    s = torch.from_numpy(sig)
    with torch.no_grad():
        c = blind_scores(clean_coded, s)
        p = blind_scores(proxy(poison(clean, s, epsilon)), s)
    return c.numpy().astype(np.float64), p.numpy().astype(np.float64)


def diagnose(
    client: Client,
    signature: np.ndarray,
    *,
    epsilon: float = defaults.EPSILON,
    codec: Codec = Codec(),
    carriers: DatasetCarriers = DatasetCarriers(),
    qp_offset: float = 5.0,
    temperature: float = 0.3,
    target_fpr: float = defaults.TARGET_FPR,
    random: int = 20,
    seed: int = 0,
    plot: str | Path | None = None,
) -> tuple[list[Row], dict[str, float]]:
    """Rows of statistics (proxy per rounding mode, then the real codec) and Spearman's rank
    correlation between proxy and real separation over ``random`` random signatures, per mode."""
    clean_np = client.transcode(None, carriers=carriers, codec=codec, include_input=True).inputs
    clean = torch.from_numpy(clean_np.astype(np.float32) / 255)
    qp = codec.resolved().crf + qp_offset
    proxies = {r: H264Proxy(qp, r, temperature) for r in ROUNDING if r != "hard"}
    with torch.no_grad():
        coded = {r: p(clean) for r, p in proxies.items()}
    decision = stats.Decision(target_fpr=target_fpr)
    rows = []
    for r, proxy in proxies.items():
        c, p = proxy_scores(clean, coded[r], signature, epsilon, proxy)
        rows.append(Row(f"proxy {r} (QP {qp:g})", stats.detection_stats(c, p, decision)))
    real = client.evaluate(signature[None], epsilon=epsilon, carriers=carriers, codecs=codec, target_fpr=target_fpr)
    s = real.candidates[0].codecs[0]
    rows.append(Row(f"real {codec.label()}", {k: getattr(s, k) for k in rows[0].stats}))

    sigs = random_signatures(random, clean.shape[2:4], seed)
    real_sep = client.fitness(sigs, epsilon=epsilon, carriers=carriers, codecs=codec)
    proxy_sep = {
        r: np.array([np.mean(np.subtract(*proxy_scores(clean, coded[r], x, epsilon, p)[::-1])) for x in sigs])
        for r, p in proxies.items()
    }
    rho = {r: float(sps.spearmanr(v, real_sep).statistic) for r, v in proxy_sep.items()}
    if plot is not None:
        from codecloop import plots

        plots.diagnose_plot(Path(plot), proxy_sep, real_sep, rho, codec.label(), epsilon)
    return rows, rho


def table(rows: list[Row], rho: dict[str, float]) -> str:
    lines = [f"{'':28} {'clean μ±σ':>16} {'poisoned μ±σ':>16} {'sep':>8} {'TPR':>5} {'FPR':>5} {'p':>8}"]
    for row in rows:
        s = row.stats
        lines.append(
            f"{row.name:28} {s['clean_mean']:>7.3f}±{s['clean_std']:<7.3f} {s['poisoned_mean']:>7.3f}±{s['poisoned_std']:<7.3f} "
            f"{s['separation']:>8.4f} {s['tpr']:>5.0%} {s['fpr']:>5.0%} {s['p_value']:>8.2g}"
        )
    lines.append("proxy-vs-real rank correlation (Spearman ρ over random signatures): " + ", ".join(f"{k} {v:.2f}" for k, v in rho.items()))
    return "\n".join(lines)
