"""Check the CUDA attention path on a GPU machine in one command; writes a JSON report and prints its tables.

    python scripts/gpu_check.py                      # everything, <= ~6 minutes on an H100/H200
    python scripts/gpu_check.py --quick              # fewer cases, ~2 minutes
    python scripts/gpu_check.py --sections precision,op --out /tmp/report.json

Sections (each runs in its own try/except: a failure is an error row, the others still run):

* ``tests``: the project's CUDA tests (tests/test_flex_cuda.py and the CUDA tests of
  tests/test_ops_forgetting_attention.py) in a pytest subprocess.
* ``precision``: relative errors (norm-wise, vs float64 of the same rounded inputs, tests/attn_precision.py)
  of the output and of every gradient (q, k, v, log f) at 4096 tokens: ours ("flex"), the fold on GPU
  SDPA ("cuda"), FLA's kernel ("fla", where fla-core is installed; unpadded cases) and plain SDPA with
  no gate ("sdpa", the dtype's floor); bf16 / fp16 / fp32, strong / weak / mixed gates, MHA and GQA
  with left padding.
* ``op``: forward+backward time (median of CUDA-event timings after warm-up, compile included in the
  warm-up) and peak memory of one call, 64k tokens per call, n = 2k..128k, d = 128 (and d = 64 at 8k):
  plain SDPA (no gate, the 1.0 of ``x_plain``), flex pruned and unpruned, the fold, FLA, and a dense
  n x n bias through SDPA (what x-transformers does; skipped where it would not fit); random (strong)
  gates and "trained-like" gates (per-head time scales from a few tokens to never forgetting, the
  spread of a trained FoX model), gates that never forget (at 32k), and with ``--trained RUN_DIR`` the
  gates of a trained run on its validation text (its least-forgetting layer).
* ``train``: tokens/s and peak memory of a training step (AdamW, bf16 autocast) of a ~170M-parameter
  decoder (dim 1024, depth 12, 16 heads) at 4k and 16k tokens per row for none / rotary / alibi / fox /
  fox_pro, eager, compiled for the positions in ``--compile`` at 16k, and x-transformers
  (``attn_flash=True``; FoX = ``attn_data_dependent_alibi``) where installed.
* ``decode``: cached decoding on CUDA (prefill, then one token at a time) vs the full forward.
* ``xforget_train``: the default ``xforget-train`` for a short budget (``--train-budget``).

Without CUDA: one ``error:`` line, exit 2, nothing written.  Timings: same process, same GPU, one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "precision", "op", "train", "decode", "xforget_train")
DEFAULT_OUT = ROOT / "docs" / "gpu" / "report.json"
DEVICE = "cuda"  # the sections' device (tests/test_gpu_check.py runs them on the CPU with the "tiny" sizes)

# sizes per mode: "full" (the default), "quick" (--quick); "tiny" is the CPU smoke test's
SIZES = {
    "full": dict(prec=(2, 8, 4096, 64), prec_dtypes=("bfloat16", "float16", "float32"),
                 prec_gates=("strong", "weak", "mixed"), prec_layouts=("mha", "gqa-left-pad"),
                 op_tokens=65536, op_heads=8, op_never_n=32768, op_shapes=((2048, 128), (8192, 128), (8192, 64), (32768, 128),
                                                         (131072, 128)),
                 train=(16384, 1024, 12, 16), train_lengths=(4096, 16384), train_tokens=16384,
                 train_positions=("none", "rotary", "alibi", "fox", "fox_pro"),
                 decode=(2000, 64), decode_model=(256, 4, 8, 2)),
    "quick": dict(prec=(2, 8, 4096, 64), prec_dtypes=("bfloat16",), prec_gates=("strong", "mixed"),
                  prec_layouts=("mha",), op_tokens=65536, op_heads=8, op_never_n=32768, op_shapes=((8192, 128), (32768, 128)),
                  train=(16384, 1024, 12, 16), train_lengths=(16384,), train_tokens=16384,
                  train_positions=("none", "fox"), decode=(2000, 64), decode_model=(256, 4, 8, 2)),
    "tiny": dict(prec=(1, 4, 64, 16), prec_dtypes=("float32",), prec_gates=("strong",),
                 prec_layouts=("mha", "gqa-left-pad"), op_tokens=128, op_heads=2, op_never_n=64, op_shapes=((64, 16),),
                 train=(64, 32, 1, 2), train_lengths=(32,), train_tokens=64, train_positions=("none", "fox"),
                 decode=(20, 3), decode_model=(32, 1, 2, 1)),
}

# the columns of each table, in order (the JSON rows hold at least these keys)
COLUMNS = {
    "precision": ["dtype", "gates", "layout", "impl", "out", "dq", "dk", "dv", "dlogf"],
    "op": ["n", "d", "impl", "gates", "ms", "gb", "x_plain"],
    "train": ["impl", "position", "n", "compiled", "tokens_per_s", "gb"],
    "decode": ["impl", "dtype", "prompt", "steps", "max_abs_diff"],
    "tests": ["passed", "failed", "skipped", "errors", "seconds"],
    "xforget_train": ["rc", "seconds", "steps", "tokens_per_s", "val_bpb"],
}


# ----------------------------------------------------------------------------- report formatting


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return str(value)
        a = abs(value)
        return f"{value:.3g}" if a < 1e-2 or a >= 1e5 else f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Rows as an aligned text table; an error row (key ``error``) is one line naming its section and cause."""
    good = [r for r in rows if "error" not in r]
    lines = []
    if good:
        cells = [[fmt(r.get(c)) for c in columns] for r in good]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines += [f"ERROR {r.get('where', '')}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The printed report: a header, then one table per section that has rows."""
    head = [f"device: {report.get('device')}", f"torch: {report.get('torch')}"]
    head += [f"{k}: {report[k]}" for k in ("triton", "fla", "x_transformers") if report.get(k)]
    parts = ["\n".join(head)]
    for name in SECTIONS:
        rows = report.get(name)
        if rows:
            took = report.get("seconds", {}).get(name)
            title = f"== {name}" + (f" ({took:.0f} s)" if took is not None else "")
            parts.append(title + "\n" + format_table(rows, COLUMNS[name]))
    return "\n\n".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer cases (~2 minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report path (default docs/gpu/report.json)")
    p.add_argument("--compile", default="none,fox", help="positions whose 16k training step is also compiled")
    p.add_argument("--train-budget", default="45s", help="trainer.max_time of the xforget_train section")
    p.add_argument("--trained", default=None, metavar="RUN_DIR",
                   help="op timings also with the gates of this trained FoX run (its least-forgetting layer)")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        fail(f"--sections={args.sections!r}: unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
    args.sections = sections
    if args.trained is not None and not Path(args.trained).expanduser().is_dir():
        fail(f"--trained={args.trained!r}: no such directory; give a run directory of xforget-train (a FoX model)")
    return args


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- measurements


def sizes(args) -> dict:
    return SIZES[getattr(args, "size", None) or ("quick" if args.quick else "full")]


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def timed_ms(fn, warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls (compilation included there); CUDA events on CUDA."""
    import torch

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        if DEVICE == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_gb(fn):
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before, in GB (None off CUDA)."""
    import torch

    if DEVICE != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def impl_ops(has_fla: bool) -> dict:
    """name -> op(q, k, v, log_f, mask=, document_ids=) for the precision table and the op timings."""
    import torch.nn.functional as F

    from xforget.ops import forgetting_attention

    def backend(name, **kw):
        def op(q, k, v, lf, mask=None, document_ids=None):
            return forgetting_attention(q, k, v, lf, mask=mask, document_ids=document_ids, backend=name, **kw)
        return op

    def sdpa(q, k, v, lf, mask=None, document_ids=None):  # no gate: the dtype's floor
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])

    ops = {"flex": backend("flex"), "flex_unpruned": backend("flex", prune=False), "cuda": backend("cuda"),
           "sdpa": sdpa}
    if has_fla:
        ops["fla"] = backend("fla")
    return ops


LAYOUTS = {"mha": dict(kv=1, pad=None), "gqa-left-pad": dict(kv=4, pad="left")}  # kv: query heads per kv head


def section_precision(args, env) -> list[dict]:
    import torch

    import attn_precision as P

    size = sizes(args)
    ops = impl_ops(env["has_fla"])
    b, h, n, d = size["prec"]
    rows = []
    for dtype_name in size["prec_dtypes"]:
        dtype = getattr(torch, dtype_name)
        for g in size["prec_gates"]:
            for layout in size["prec_layouts"]:
                lay = LAYOUTS[layout]
                case = P.make_case(b, h, h // lay["kv"], n, d, g, pad=lay["pad"], seed=1, device=DEVICE)
                ref = P.reference(P.rounded(case, dtype))
                no_gate = {**case, "lf": case["lf"] * 0, "mask": None}
                floor = P.reference(P.rounded(no_gate, dtype))
                for name in ("flex", "cuda", "fla", "sdpa"):
                    if name not in ops or (name == "fla" and lay["pad"]):
                        continue
                    row = dict(dtype=dtype_name, gates=g, layout=layout, impl=name, max_c=round(P.max_abs_c(case)))
                    try:
                        if name == "sdpa":
                            row.update(P.rel_errors(P.run_op(ops[name], no_gate, dtype), floor))
                        else:
                            row.update(P.rel_errors(P.run_op(ops[name], case, dtype), ref))
                    except Exception as exc:  # one failing kernel is a row, not the end of the table
                        row = {"where": f"precision {dtype_name} {g} {layout} {name}",
                               "error": f"{type(exc).__name__}: {exc}"}
                    rows.append(row)
                case = ref = floor = no_gate = None
                free_memory()
    return rows


def trained_like_gates(b: int, h: int, n: int, device):
    """log f with the per-head spread of a trained FoX model: time scales 1/(1-f) from ~2 tokens to
    never forgetting (the last head), a little per-token noise."""
    import torch
    import torch.nn.functional as F

    offs = torch.linspace(-1.0, 9.0, h, device=device)
    lf = F.logsigmoid(offs[None, :, None] + 0.5 * torch.randn(b, h, n, device=device))
    lf[:, -1] = 0.0
    return lf


def capture_gates(net, ids) -> list:
    """The ``log_fgate`` (b, h, n) every attention call of ``net(ids)`` receives, in call order (no grad)."""
    import torch

    from xforget.ops import dispatch

    seen, saved = [], dict(dispatch._IMPLS)

    def spy(impl):
        def run(call):
            if call.log_fgate is not None:
                seen.append(call.log_fgate.detach().float().expand(call.shapes.b, call.shapes.h, -1).clone())
            return impl(call)
        return run

    try:
        dispatch._IMPLS.update({name: spy(impl) for name, impl in saved.items()})
        with torch.no_grad():
            net(ids)
    finally:
        dispatch._IMPLS.update(saved)
    return seen


def gates_of_run(run_dir: str, n: int, heads: int):
    """(1, heads, n) log f of the least-forgetting layer of a trained run on n tokens of its validation text
    (``--trained``): the gates users get, at the length measured (heads repeated or cut to ``heads``)."""
    import torch

    from xforget.evaluate.core import validation_bytes
    from xforget.train.loading import load_model

    net, cfg = load_model(run_dir, DEVICE)
    text, _ = validation_bytes(cfg.data)
    ids = text.repeat(n // max(1, text.numel()) + 1)[:n].long().to(DEVICE)[None]
    layers = capture_gates(net.eval(), ids)
    if not layers:
        raise ValueError(f"--trained={run_dir}: the model has no forget gate (position fox, alibi, ...)")
    least = min(layers, key=lambda g: g.abs().mean().item())  # prunes least: the conservative choice
    idx = torch.arange(heads, device=least.device) % least.shape[1]
    return least[:1, idx]


def section_op(args, env) -> list[dict]:
    import torch
    import torch.nn.functional as F

    size = sizes(args)
    ops = impl_ops(env["has_fla"])
    h = size["op_heads"]
    free = torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else 1 << 33
    half = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    rows = []
    for n, d in size["op_shapes"]:
        b = max(1, size["op_tokens"] // n)
        # "never": every head f = 1, nothing to prune: flex must cost what unpruned flex costs (<= 1.05x);
        # "run": the gates of a trained model (--trained RUN_DIR)
        kinds = ("random", "trained") + (("never",) if n == size["op_never_n"] else ())
        for gates in kinds + (("run",) if getattr(args, "trained", None) else ()):
            torch.manual_seed(0)
            q, k, v = (torch.randn(b, h, n, d, device=DEVICE, dtype=half).requires_grad_() for _ in range(3))
            lf = {"random": lambda: F.logsigmoid(torch.randn(b, h, n, device=DEVICE)),
                  "trained": lambda: trained_like_gates(b, h, n, DEVICE),
                  "never": lambda: torch.zeros(b, h, n, device=DEVICE),
                  "run": lambda: gates_of_run(args.trained, n, h).expand(b, h, n).contiguous()}[gates]().requires_grad_()
            grad = torch.randn_like(q)
            plain_ms = None
            for name in ("sdpa", "flex", "flex_unpruned", "cuda", "fla", "dense_bias"):
                if name != "dense_bias" and name not in ops:
                    continue
                if name == "dense_bias":
                    need = b * h * n * n * 2 * 4  # bf16 bias, its gradient and the softmax's buffers
                    if need > 0.6 * free:
                        rows.append(dict(n=n, d=d, impl=name, gates=gates, skipped=f"needs ~{need / 1e9:.0f} GB"))
                        continue
                step = fwd_bwd(dense_bias_op if name == "dense_bias" else ops[name], q, k, v, lf, grad)
                try:
                    ms = timed_ms(step)
                    gb = peak_gb(step)
                    if name == "sdpa":
                        plain_ms = ms
                    rows.append(dict(n=n, d=d, impl=name, gates=gates, ms=ms, gb=gb,
                                     x_plain=None if plain_ms is None else ms / plain_ms))
                except Exception as exc:
                    rows.append(dict(where=f"op n={n} d={d} {name} {gates}", error=f"{type(exc).__name__}: {exc}"))
                step = None
                free_memory()
            q = k = v = lf = grad = None  # free before the next shape
            free_memory()
    return rows


def fwd_bwd(op, q, k, v, lf, grad):
    """One forward+backward of ``op`` with the gradients dropped afterwards (a timed step)."""
    def step():
        op(q, k, v, lf).backward(grad)
        for t in (q, k, v, lf):
            t.grad = None
    return step


def dense_bias_op(q, k, v, lf, mask=None, document_ids=None):
    """What x-transformers' data-dependent ALiBi does with attn_flash: the (n, n) decay bias as an SDPA mask."""
    import torch
    import torch.nn.functional as F

    n = q.shape[2]
    c = lf.float().cumsum(-1)
    bias = (c[..., :, None] - c[..., None, :]).to(q.dtype)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    bias = bias.masked_fill(~causal, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=q.shape[1] != k.shape[1])


FOX_PRO = dict(position="fox", forget_gate_divisor=1.0, forget_gate_bias_init=0.0, qk_norm=True, output_gate=True,
               kv_shift=True, output_norm=True, norm="rmsnorm", ff_activation="swiglu")  # configs/model/fox_pro.yaml


def train_step_row(make, n, impl, position, compile_it, vocab, tokens) -> dict:
    """tokens/s and peak memory of one AdamW training step (bf16 autocast on CUDA) of ``make()``'s model."""
    import torch

    torch.manual_seed(0)
    model = make().to(DEVICE)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEVICE == "cuda")
    fwd = torch.compile(model) if compile_it else model
    b = max(1, tokens // n)
    x = torch.randint(0, vocab, (b, n + 1), device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            logits = fwd(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = timed_ms(step, warmup=3 if compile_it else 2, reps=4)
    gb = peak_gb(step)
    return dict(impl=impl, position=position, n=n, compiled=compile_it, tokens_per_s=b * n / (ms / 1e3), gb=gb,
                params_m=round(params, 1))


def section_train(args, env) -> list[dict]:
    from xforget import Decoder, TransformerWrapper

    size = sizes(args)
    vocab, dim, depth, heads = size["train"]
    compiled = {p.strip() for p in args.compile.split(",") if p.strip()}
    longest = max(size["train_lengths"])
    rows = []

    def ours(position):
        kw = FOX_PRO if position == "fox_pro" else dict(position=position)
        return lambda: TransformerWrapper(num_tokens=vocab, max_seq_len=longest,
                                          attn_layers=Decoder(dim=dim, depth=depth, heads=heads, **kw))

    def peer(position):
        import x_transformers as xt

        kw = {"rotary": dict(rotary_pos_emb=True), "alibi": dict(alibi_pos_bias=True),
              "fox": dict(attn_data_dependent_alibi=True)}.get(position, {})
        return lambda: xt.TransformerWrapper(num_tokens=vocab, max_seq_len=longest, attn_layers=xt.Decoder(
            dim=dim, depth=depth, heads=heads, attn_flash=True, **kw))

    runs = []
    for n in size["train_lengths"]:
        for position in size["train_positions"]:
            for compile_it in ([False, True] if (n == longest and position in compiled) else [False]):
                runs.append((ours(position), n, "xforget", position, compile_it))
        if env.get("x_transformers"):
            runs += [(peer(position), n, "x_transformers", position, False)
                     for position in size["train_positions"] if position != "fox_pro"]
    for make, n, impl, position, compile_it in runs:
        try:
            rows.append(train_step_row(make, n, impl, position, compile_it, vocab, size["train_tokens"]))
        except Exception as exc:  # e.g. out of memory: the dense n x n bias of the peer's FoX
            rows.append(dict(where=f"train {impl} {position} n={n} compiled={compile_it}",
                             error=f"{type(exc).__name__}: {exc}"[:300]))
        free_memory()
    return rows


def section_decode(args, env) -> list[dict]:
    import torch

    from xforget import Decoder, TransformerWrapper

    prompt, steps = sizes(args)["decode"]
    dim, depth, heads, kv_heads = sizes(args)["decode_model"]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        net = TransformerWrapper(num_tokens=256, max_seq_len=prompt + steps, attn_layers=Decoder(
            dim=dim, depth=depth, heads=heads, kv_heads=kv_heads, position="fox", forget_gate_bias_init=0.0))
        net = net.to(DEVICE, dtype).eval()
        x = torch.randint(0, 256, (2, prompt + steps), device=DEVICE)
        with torch.no_grad():
            full = net(x)
            logits, cache = net(x[:, :prompt], return_cache=True)
            got = [logits]
            for t in range(prompt, prompt + steps):
                logits, cache = net(x[:, t:t + 1], cache=cache, return_cache=True)
                got.append(logits)
        diff = (torch.cat(got, 1).float() - full.float()).abs().max().item()
        rows.append(dict(impl="xforget fox", dtype=str(dtype).replace("torch.", ""), prompt=prompt, steps=steps,
                         max_abs_diff=diff))
    return rows


def pytest_counts(summary: str) -> dict:
    """``{passed, failed, skipped, errors}`` from pytest's last line (e.g. "3 passed, 1 skipped in 2.0s")."""
    words = summary.replace(",", " ").split()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for tok, word in zip(words, words[1:]):
        key = "errors" if word in ("error", "errors") else word
        if tok.isdigit() and key in counts:
            counts[key] = int(tok)
    return counts


def section_tests(args, env) -> list[dict]:
    targets = ["tests/test_flex_cuda.py", "tests/test_ops_forgetting_attention.py::test_cuda_backend_matches_reference"]
    if args.quick:
        targets = ["tests/test_flex_cuda.py", "-k", "bfloat16 or auto or decoder"]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    row = dict(seconds=time.time() - t0, summary=summary, rc=proc.returncode, **pytest_counts(summary))
    if proc.returncode not in (0, 5):
        row["failures"] = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))][:20]
    return [row]


def section_xforget_train(args, env) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        cmd = [sys.executable, "-m", "xforget.train", f"trainer.max_time={args.train_budget}", f"hydra.run.dir={tmp}/run"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        row = dict(rc=proc.returncode, seconds=time.time() - t0, command=" ".join(cmd[1:]))
        metrics = Path(tmp, "run", "metrics.jsonl")
        if metrics.exists():
            recs = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            speeds = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r]
            row["steps"] = max((r.get("step", 0) for r in recs), default=0)
            row["tokens_per_s"] = speeds[-1] if speeds else None
            bpb = [r["val_bpb"] for r in recs if "val_bpb" in r]
            row["val_bpb"] = bpb[-1] if bpb else None
        if proc.returncode != 0:
            row["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
        return [row]


RUNNERS = {"tests": section_tests, "precision": section_precision, "op": section_op, "train": section_train,
           "decode": section_decode, "xforget_train": section_xforget_train}


def environment() -> dict:
    import importlib.util

    import torch

    env = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "has_fla": importlib.util.find_spec("fla") is not None}
    for mod, key in (("triton", "triton"), ("fla", "fla"), ("x_transformers", "x_transformers")):
        with contextlib.suppress(Exception):
            if importlib.util.find_spec(mod) is not None:
                from importlib.metadata import version

                env[key] = version({"fla": "fla-core", "x_transformers": "x-transformers"}.get(mod, mod))
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        fail("no CUDA device (torch.cuda.is_available() is False): gpu_check measures the CUDA path; "
             "run it on a machine with an NVIDIA GPU and a CUDA build of torch")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch._dynamo

    # many shapes and dtypes in one process: let flex_attention recompile for each instead of falling back
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one (torch <= 2.5)
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    env = environment()
    report = {**{k: v for k, v in env.items() if k != "has_fla"}, "quick": args.quick,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": {}}
    out = Path(args.out)
    for name in args.sections:
        t0 = time.time()
        try:
            report[name] = RUNNERS[name](args, env)
        except Exception as exc:  # the section is an error row; the others still run
            report[name] = [dict(where=name, error=f"{type(exc).__name__}: {exc}",
                                 trace=traceback.format_exc().splitlines()[-6:])]
        report["seconds"][name] = time.time() - t0
        print(f"[{name}: {report['seconds'][name]:.0f} s]", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")  # after every section: nothing lost
    print(format_report(report))
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
