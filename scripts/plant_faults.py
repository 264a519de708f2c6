"""Plant one-line faults in a copy of the repository and check that the tests catch each one.

    .venv/bin/python scripts/plant_faults.py             # every fault, its targeted tests (~5 min on 2 cores)
    .venv/bin/python scripts/plant_faults.py --only lr-min-ratio,mfu-peak
    .venv/bin/python scripts/plant_faults.py --list      # the faults, without running anything

Each fault is a small edit a careless commit could make (a dropped factor, a
swapped order, a wrong default). The script copies the working tree (tracked and
untracked, not ignored files) into a temporary directory, checks that the
targeted tests pass there unchanged, then for each fault applies it (the text
to replace must occur exactly once), runs the tests that should catch it
(``pytest -x``; they are a subset of ``make test``, so a fault caught here is
caught by ``make test``), restores the file, and prints a markdown table:
caught (a test failed) or SURVIVED (every test passed: a missing test).

Exit status: 0 if every fault was caught, 1 if any survived, 2 on a bad
fault list (a text to replace that is missing or ambiguous) or a failing
baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str  # what the README/issue calls the behaviour
    path: str  # file, relative to the repository root
    old: str  # exact text, must occur once
    new: str
    tests: tuple[str, ...]  # pytest node ids / files that must catch it
    what: str


T_DETAILS = "tests/test_train_details.py"
T_BOUND = "tests/test_prune_bound.py"
T_COMPILE = "tests/test_compile.py"
FAULTS: list[Fault] = [
    # ---- training loop
    Fault("lr-min-ratio", "training: lr schedule", "xforget/train/schedule.py",
          "return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))",
          "return 0.5 * (1.0 + math.cos(math.pi * progress))",
          (f"{T_DETAILS}::test_logged_lr_follows_warmup_then_cosine",), "cosine decays to 0, ignoring min_lr_ratio"),
    Fault("lr-warmup-off-by-one", "training: lr schedule", "xforget/train/schedule.py",
          "return (step + 1) / warmup_steps", "return step / warmup_steps",
          (f"{T_DETAILS}::test_logged_lr_follows_warmup_then_cosine",), "warmup starts at lr 0"),
    Fault("lr-decay-length", "training: lr schedule", "xforget/train/schedule.py",
          "decay_steps = max(1, max_steps - 1 - warmup_steps)", "decay_steps = max(1, max_steps - warmup_steps)",
          (f"{T_DETAILS}::test_logged_lr_follows_warmup_then_cosine",), "the minimum lr is never reached"),
    Fault("grad-clip-off", "training: gradient clipping", "xforget/train/loop.py",
          "if t.grad_clip > 0:", "if t.grad_clip < 0:",
          (f"{T_DETAILS}::test_one_step_equals_a_float64_adamw_step",), "clipping never runs"),
    Fault("grad-accum-sum", "training: gradient accumulation", "xforget/train/loop.py",
          "scaler.scale(loss).backward()", "scaler.scale(loss * t.grad_accum).backward()",
          (f"{T_DETAILS}::test_one_step_equals_a_float64_adamw_step",),
          "micro-batch gradients summed, not averaged (the logged loss stays right)"),
    Fault("autocast-off", "training: autocast", "xforget/train/loop.py",
          "if amp_dtype is None:", "if True:",
          (f"{T_DETAILS}::test_autocast_is_applied_to_training_and_validation_runs_in_fp32",), "bf16/fp16 run in fp32"),
    Fault("mfu-peak", "training: MFU", "xforget/train/loop.py",
          'record["mfu"] = run.flops_per_token * tokens_per_s / (run.peak * run.info.world_size)',
          'record["mfu"] = run.flops_per_token * tokens_per_s / (1e12 * run.info.world_size)',
          (f"{T_DETAILS}::test_tflops_and_mfu_follow_their_formulas",), "MFU reported as TFLOP/s"),
    Fault("decay-by-ndim", "training: weight decay groups", "xforget/train/optim.py",
          "matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - tables",
          "matrices = {id(p) for p in model.parameters() if p.ndim >= 2} - tables",
          (T_DETAILS,), "every >= 2-d tensor decayed: per-head norm gains, memory key/values (the old bug)"),
    Fault("decay-embeddings", "training: weight decay groups", "xforget/train/optim.py",
          "tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}", "tables = set()",
          (T_DETAILS,), "a tied output projection (the token table) decayed"),
    # ---- sampling
    Fault("temperature-ignored", "sampling: temperature", "xforget/models/sampling.py",
          "logits = logits / temperature", "logits = logits / 1.0",
          ("tests/test_sampling.py",), "temperature has no effect"),
    Fault("temperature-after-filters", "sampling: temperature order", "xforget/models/sampling.py",
          "    logits = logits / temperature\n    logits = top_k_filter(logits, top_k)\n"
          "    logits = top_p_filter(logits, top_p)\n    logits = min_p_filter(logits, min_p)\n"
          "    probs = logits.softmax(dim=-1)",
          "    logits = top_k_filter(logits, top_k)\n    logits = top_p_filter(logits, top_p)\n"
          "    logits = min_p_filter(logits, min_p)\n    probs = (logits / temperature).softmax(dim=-1)",
          ("tests/test_sampling.py",), "filters before temperature (the pre-issue-11 order)"),
    Fault("top-p-before-top-k", "sampling: filter order", "xforget/models/sampling.py",
          "    logits = top_k_filter(logits, top_k)\n    logits = top_p_filter(logits, top_p)\n",
          "    logits = top_p_filter(logits, top_p)\n    logits = top_k_filter(logits, top_k)\n",
          ("tests/test_sampling.py",), "top-p applied before top-k"),
    Fault("eos-rows-restart", "sampling: eos stopping", "xforget/models/sampling.py",
          "new = new.masked_fill(done, sampling.eos_token)", "new = new",
          ("tests/test_generate.py::test_eos_is_sampled_then_rows_stop_and_streaming_ends",),
          "a row that produced eos keeps sampling"),
    Fault("eos-stop-early", "sampling: eos stopping", "xforget/models/sampling.py",
          "if sampling.eos_token is not None and bool(done.all()):",
          "if sampling.eos_token is not None and bool(done.any()):",
          ("tests/test_generate.py::test_eos_is_sampled_then_rows_stop_and_streaming_ends",),
          "generation ends when the first row is done"),
    # ---- routing
    Fault("route-reference", "routing: O(n) fold by default", "xforget/ops/dispatch.py",
          '    return "fold"\n\n\ndef route(', '    return "reference"\n\n\ndef route(',
          ("tests/test_routing.py",), "FoX / ALiBi routed to the O(n^2) reference"),
    Fault("route-decode-threshold", "routing: decode", "xforget/ops/dispatch.py",
          "if n_k is not None and n_q <= MAX_DECODE_QUERIES and n_q < n_k:", "if n_k is not None and n_q < n_k:",
          ("tests/test_routing.py",), "long cached chunks take the O(n_q n_k) decode path"),
    # ---- the fold's exact channels (xforget/ops/rebase.py)
    Fault("fold-tile-padding-off", "kernels: fold whole key tiles", "xforget/ops/rebase.py",
          "    return -n % KEY_TILE", "    return 0",
          ("tests/test_fold_precision.py",), "rows ending in a short key tile lose the exact channels' precision"),
    Fault("fold-pad-queries-kept", "kernels: fold tile padding dropped", "xforget/ops/fold.py",
          "return call.finish(out[..., : s.n_q, : s.d_v])", "return call.finish(out[..., -s.n_q:, : s.d_v])",
          ("tests/test_fold_precision.py",), "the pad queries' outputs taken instead of the first ones"),
    # ---- pruning: each term of the bound (xforget/ops/prune.py), caught by its adversarial case
    Fault("prune-threshold-no-nk", "pruning: threshold eps / n_k", "xforget/ops/prune.py",
          "return math.log(eps) - math.log(max(n_k, 1))", "return math.log(eps)",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[threshold]",),
          "weights below eps (not eps / n_k) pruned: a row's pruned mass can reach n_k * eps"),
    Fault("prune-decay-block-end", "pruning: decay from the block's first query", "xforget/ops/prune.py",
          "c_i0 = c[..., first]  # (b, h, nb)", "c_i0 = c[..., (first + block - 1).clamp(max=s.n_k - 1)]  # (b, h, nb)",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[decay-inside-block]",),
          "decay measured from the block's last query: earlier rows decay less"),
    Fault("prune-decay-prefix-start", "pruning: decay to the prefix's last key", "xforget/ops/prune.py",
          "c_end = c[..., ends - 1]", "c_end = c[..., ends - align]",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[decay-inside-prefix]",),
          "decay measured to the start of the prefix's last key block"),
    Fault("prune-query-norm-first", "pruning: the block's largest query norm", "xforget/ops/prune.py",
          "(0, nb * block - n_q)).view(b, h, nb, block).amax(-1)", "(0, nb * block - n_q)).view(b, h, nb, block)[..., 0]",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[query-norm]",),
          "the norm of the block's first query, not the largest"),
    Fault("prune-key-norm-last", "pruning: the prefix's largest key norm", "xforget/ops/prune.py",
          "kpre = kn.cummax(-1).values[..., ends - 1]", "kpre = kn[..., ends - 1]",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[prefix-key-norm]",),
          "the norm of the prefix's last key, not the largest"),
    Fault("prune-no-reference-key", "pruning: the reference key's norm", "xforget/ops/prune.py",
          "(kpre[..., None, :] + kref[..., :, None])", "(kpre[..., None, :] + 0 * kref[..., :, None])",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[reference-key-norm]",),
          "the reference key's logit taken as 0"),
    Fault("prune-reference-in-block", "pruning: a reference key before the block", "xforget/ops/prune.py",
          "        if mask is None:\n            kq = ", "        if True:\n            kq = ",
          (f"{T_BOUND}::test_each_term_of_the_bound_is_needed_and_tight[reference-key-far]",),
          "with padding the reference key bounded by the block's own keys (pad queries look further back)"),
    Fault("decode-group-latest-start", "pruning: decode, a kv head serves its group", "xforget/ops/decode.py",
          "kv_start = start.view(s.b, s.h_kv, g).amin(-1)", "kv_start = start.view(s.b, s.h_kv, g).amax(-1)",
          (f"{T_BOUND}::test_decode_path_prunes_within_the_bound_and_a_kv_head_serves_its_whole_group",),
          "a shared kv head skips what only one of its query heads forgot"),
    Fault("route-cuda-fold", "routing: CUDA default", "xforget/ops/dispatch.py",
          'return "cuda" if q.dtype == torch.float64 else "flex"', 'return "cuda"',
          ("tests/test_flex.py::test_auto_routes_cuda_to_flex_and_decoding_to_decode",),
          "CUDA tensors back on the fold, whose bf16 gate gradient is imprecise"),
    # ---- kernels
    Fault("flex-full-tiles-with-pads", "kernels: flex block mask", "xforget/ops/block_mask.py",
          "        full = full & all_real\n", "        full = full\n",
          ("tests/test_flex.py::test_tile_plan_matches_dense_tiles",),
          "tiles holding pad keys run as full tiles: pad keys get weight"),
    Fault("flex-decay-sign", "kernels: flex decay", "xforget/ops/flex.py",
          "return score + (row[b, h, q_idx + offset] - c[b, h, kv_idx])",
          "return score + (c[b, h, kv_idx] - row[b, h, q_idx + offset])",
          ("tests/test_flex.py::test_flex_inputs_every_gradient_vs_float64",),
          "the decay added with the wrong sign (old keys favoured)"),
    # ---- compile: torch.compile(model, fullgraph=True) (tests/test_compile.py)
    Fault("compile-positions-host-read", "compile: cached positions without a host read", "xforget/models/wrapper.py",
          "        if mask is None:\n            return seen[:, None] + torch.arange(n, device=device)",
          "        if mask is None:\n            if bool((seen == seen[0]).all()):\n"
          "                return torch.arange(n, device=device) + seen[0]\n"
          "            return seen[:, None] + torch.arange(n, device=device)",
          (f"{T_COMPILE}::test_fullgraph_cached_decoding_equals_eager_token_by_token",),
          "the old shared-offset branch: a host read and a graph break at every cached call"),
    Fault("compile-prune-graph-break", "compile: the pruned fold traces", "xforget/ops/fold.py",
          "def _pruned(q, k, c, mask,", "@torch.compiler.disable\ndef _pruned(q, k, c, mask,",
          (f"{T_COMPILE}::test_fullgraph_training_step_equals_eager_for_every_scheme",),
          "the pruning plan run outside the graph (the old design): fullgraph=True fails"),
    # ---- zoo
    Fault("kv-shift-values", "zoo: KV-shift of values", "xforget/nn/kv_shift.py",
          "return k.lerp(prev_k, a), v.lerp(prev_v, a), ShiftState(last_k, last_v, mem_k, mem_v)",
          "return k.lerp(prev_k, a), v, ShiftState(last_k, last_v, mem_k, mem_v)",
          ("tests/test_zoo_attention.py::test_kv_shift_formula_padding_and_state_float64",), "values not shifted"),
    Fault("ff-relu", "zoo: relu feed-forward", "xforget/nn/feedforward.py",
          '"relu": F.relu,', '"relu": F.gelu,', ("tests/test_zoo_blocks.py::test_feedforward_formulas_float64",),
          "relu is gelu"),
    Fault("ff-silu", "zoo: silu feed-forward", "xforget/nn/feedforward.py",
          '"silu": F.silu,', '"silu": F.gelu,', ("tests/test_zoo_blocks.py::test_feedforward_formulas_float64",),
          "silu is gelu"),
    Fault("preset-gpt-untied", "zoo: preset contents", "configs/model/gpt.yaml",
          "tie_embedding: true", "tie_embedding: false", ("tests/test_zoo_details.py",),
          "the gpt preset forgets tie_embedding"),
    Fault("preset-fox-pro-no-shift", "zoo: preset contents", "configs/model/fox_pro.yaml",
          "kv_shift: true", "kv_shift: false", ("tests/test_zoo_details.py",), "fox_pro without KV-shift"),
    Fault("preset-t5-buckets", "zoo: preset contents", "configs/model/t5.yaml",
          "num_buckets: 32", "num_buckets: 16", ("tests/test_zoo_details.py",), "t5 preset with other buckets"),
    Fault("xtransformer-blind", "zoo: XTransformer reads the encoder", "xforget/models/xtransformer.py",
          "context = self.encode(src, src_mask)", "context = torch.zeros_like(self.encode(src, src_mask))",
          ("tests/test_generate.py",), "generation ignores the source"),
    Fault("fox-per-row-scale", "zoo: fox_per_row scale", "xforget/nn/bias/fox_per_row.py",
          "g = F.logsigmoid(q_blk @ keys.to(ct).transpose(-1, -2) * scale) / self.divisor",
          "g = F.logsigmoid(q_blk @ keys.to(ct).transpose(-1, -2) / self.divisor) * scale",
          ("tests/test_zoo_positions.py::test_fox_per_row_matches_explicit_sums_float64",),
          "logit scale and divisor swapped"),
    Fault("continuous-pos-scale", "zoo: continuous wrapper", "xforget/models/continuous.py",
          "h = h + self.pos_emb(input_positions(positions, n_mem, self.num_memory_tokens))",
          "h = h + self.pos_emb.emb(input_positions(positions, n_mem, self.num_memory_tokens))",
          ("tests/test_zoo_details.py",), "absolute table added without its dim^-0.5 scale"),
    Fault("accuracy-by-position", "zoo: eval accuracy by recall distance", "xforget/evaluate/core.py",
          "by_distance=_bins(dists.flatten(), correct.flatten(), length)",
          "by_distance=_bins(targets.flatten(), correct.flatten(), length)",
          ("tests/test_zoo_details.py",), "accuracy 'by distance' binned by position"),
    Fault("packed-cache-eot", "documents: cached packed decoding", "xforget/models/packing.py",
          "ids = ids + (cache.documents[:, -1:] + cache.ends_document[:, None].long())",
          "ids = ids + cache.documents[:, -1:]",
          ("tests/test_packing_data.py::test_packed_cached_decoding_equals_the_full_window_across_end_of_text",),
          "a cached end-of-text token does not start a new document"),
    Fault("prepare-cut-in-indent", "data: prepare piece cuts", "xforget/data/prepare_inputs.py",
          "            return pos\n        pos = buf.rfind(b\" \", 0, pos)",
          "            return 0\n        pos = buf.rfind(b\" \", 0, pos)",
          ("tests/test_prepare.py::test_indented_code_gives_the_same_ids_for_any_batch_bytes",),
          "pieces never cut before a space: indented code cut inside an indent"),
]


def _copy_tree(dst: Path) -> None:
    """Tracked and untracked (not ignored) files of the working tree, copied to ``dst``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def check_faults(root: Path = REPO, faults: list[Fault] = FAULTS) -> list[str]:
    """Problems with the fault list against the tree at ``root`` (each text to replace must occur exactly once)."""
    problems = []
    names = [f.name for f in faults]
    if len(set(names)) != len(names):
        problems.append("duplicate fault names")
    for f in faults:
        path = root / f.path
        count = path.read_text().count(f.old) if path.is_file() else -1
        if count != 1:
            problems.append(f"{f.name}: {f.path} holds the text to replace {count} times (must be once)")
        for t in f.tests:
            if not (root / t.split("::")[0]).is_file():
                problems.append(f"{f.name}: no test file {t.split('::')[0]}")
    return problems


def _pytest(root: Path, tests: tuple[str, ...] | list[str], timeout: float) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode == 0, (lines[-1] if lines else proc.stderr.strip()[-200:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated fault names")
    parser.add_argument("--list", action="store_true", help="print the faults and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    args = parser.parse_args(argv)
    faults = FAULTS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {f.name for f in FAULTS})
        if unknown:
            print(f"error: unknown fault(s) {unknown}; valid: {[f.name for f in FAULTS]}", file=sys.stderr)
            return 2
        faults = [f for f in FAULTS if f.name in wanted]
    if args.list:
        for f in faults:
            print(f"{f.name:26} {f.kind:38} {f.path}: {f.what}")
        return 0
    problems = check_faults(REPO, faults)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="xforget-faults-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        env = {**os.environ, "PYTHONPATH": str(root)}
        where = subprocess.run([sys.executable, "-c", "import xforget; print(xforget.__file__)"], cwd=root, env=env,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(root)):
            print(f"error: the copy's tests would import xforget from {where}, not from {root}", file=sys.stderr)
            return 2
        wanted = {t for f in faults for t in f.tests}
        files = {t for t in wanted if "::" not in t}
        targets = sorted(t for t in wanted if t.split("::")[0] not in files or t in files)  # no test twice
        t0 = time.perf_counter()
        ok, summary = _pytest(root, targets, args.timeout)
        print(f"baseline (no fault), {len(targets)} test targets: {summary} ({time.perf_counter() - t0:.0f} s)")
        if not ok:
            print("error: the targeted tests fail without any fault; fix them first", file=sys.stderr)
            return 2

        rows, survived = [], []
        for f in faults:
            path = root / f.path
            original = path.read_text()
            path.write_text(original.replace(f.old, f.new, 1))
            t0 = time.perf_counter()
            try:
                passed, summary = _pytest(root, f.tests, args.timeout)
            finally:
                path.write_text(original)
            seconds = time.perf_counter() - t0
            result = "SURVIVED" if passed else "caught"
            if passed:
                survived.append(f.name)
            rows.append(f"| `{f.name}` | {f.kind} | `{f.path}` | {f.what} | {result} | {seconds:.0f} s |")
            print(f"{f.name}: {result} ({summary}, {seconds:.0f} s)", file=sys.stderr, flush=True)

    print("\n| fault | kind | file | planted | result | time |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(faults) - len(survived)} of {len(faults)} faults caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
