"""experiment=fox_vs_rope: the config composes, a tiny version runs end to end through the same code path,
per-position standard errors equal a float64 computation, the needle sits at the requested depth, and bad
inputs fail in one line."""

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xforget.compare import run_compare
from xforget.commands.compare import main
from xforget.compare.pipeline import load_compare_config, plan_comparison
from xforget.data.haystack import NeedleParts, make_example, make_examples, min_needle_length
from xforget.data.prepare import train_bpe
from xforget.data.tokenizer import ByteTokenizer
from xforget.data.tokens import load_tokens
from xforget.evaluate.metrics import bucket_stats, position_buckets
from xforget.evaluate.needle import needle_accuracy
from xforget.train import load_model
from xforget.data import val_windows


@pytest.fixture(scope="module")
def corpus_file():
    from corpus import corpus_path  # generated from this Python's stdlib (tests/corpus.py)

    return corpus_path()


def tiny_args(corpus_file, out, positions="[rotary,fox]"):
    """The shipped experiment, shrunk: its own BPE of 300 tokens on the test corpus, 6 steps, context 64."""
    return ["experiment=fox_vs_rope", f"positions={positions}", f"prepare.input={corpus_file}",
            "prepare.vocab_size=300", "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=64",
            "trainer.batch_size=4", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.eval_batches=2",
            "trainer.warmup_steps=2", "trainer.log_every=2", "trainer.precision=fp32", "eval.tokens=2048",
            "eval.needle_examples=1", "eval.multiples=[1,8]", "eval.needle_multiples=[1,8]",
            "eval.pruning_windows=1", f"hydra.run.dir={out}"]


@pytest.fixture(scope="module")
def compared(corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("fox_vs_rope")
    args = tiny_args(corpus_file, out)
    report = run_compare(args, log=lambda *_: None)
    return out, args, report


@pytest.fixture(scope="module")
def bpe(corpus_file):
    text = corpus_file.read_text()
    return train_bpe(iter([text[:300_000]]), 300)


def test_experiment_config_composes_with_the_issue_settings():
    cfg, out = load_compare_config(["experiment=fox_vs_rope"])
    assert cfg.positions == ["none", "rotary", "alibi", "fox", "fox_pro", "fox_value_residual"]
    assert len(cfg.seeds) >= 2 and cfg.jobs >= 1
    assert cfg.prepare is not None and cfg.prepare.input == "stdlib" and cfg.prepare.tokenizer == "bpe"
    assert 1000 <= cfg.prepare.vocab_size <= 8192
    train = dict(a.split("=", 1) for a in cfg.train)
    assert int(train["trainer.seq_len"]) >= 512
    assert max(cfg.eval.multiples) >= 8 and min(cfg.eval.multiples) == 1
    assert cfg.eval.needle_examples > 0 and cfg.eval.position_buckets > 0
    assert out.name == "fox-vs-rope"


def test_every_scheme_of_the_experiment_plans_on_prepared_tokens(corpus_file, compared):
    """All six presets compose with the experiment's training keys, on the data the tiny run prepared (re-used)."""
    out, args, _ = compared
    info = {}
    six = "[none,rotary,alibi,fox,fox_pro,fox_value_residual]"
    cfg, _, _, runs = plan_comparison(tiny_args(corpus_file, out, six), log=lambda *_: None, data_info=info)
    assert info["reused"] and info["vocab_size"] == 300
    assert [r.scheme for r in runs] == [s for s in six[1:-1].split(",") for _ in cfg.seeds]
    by = {r.scheme: r.cfg.model for r in runs}
    assert by["fox_value_residual"].value_residual and by["fox_value_residual"].position == "fox"
    assert by["fox_pro"].kv_shift and by["rotary"].position == "rotary" and by["none"].position == "none"
    assert all(r.cfg.model.num_tokens == 300 and r.cfg.data.name == "tokens" for r in runs)


def test_tiny_experiment_end_to_end(compared):
    out, _, report = compared
    for name in ("compare.md", "compare.json", "loss_vs_position.png", "bpb_vs_length.png", "fox_vs_rope.png",
                 "needle.png", "pruned_fraction.png", "loss_vs_step.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "compare.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert [s["name"] for s in data["schemes"]] == ["rotary", "fox"]
    md = (out / "compare.md").read_text()
    assert "Which findings of the FoX paper hold" in md and "Needle in a haystack" in md
    assert "Wall time of this command" in md and "xforget-compare experiment=fox_vs_rope" in md
    meta = data["meta"]
    assert meta["jobs"] == 2 and meta["prepared_data"]["vocab_size"] == 300
    assert meta["wall_s"]["total"] >= meta["wall_s"]["train"] > 0
    claims = {f["claim"].split(":")[0]: f["verdict"] for f in data["findings"]}
    assert all(v in ("holds", "does not hold", "inconclusive", "not measured") or v.startswith("partly")
               for v in claims.values())
    for s in data["schemes"]:
        pl = s["position_loss"]
        assert pl["length"] == 512 and pl["buckets"][-1]["hi"] == 512
        assert len(pl["buckets"][0]["values"]) == 2  # one per seed
        assert set(s["prefix_bpb"]) == {"64", "512"}
        assert [r["length"] for r in s["needle"]["lengths"]] == [64, 512]
    fox = next(s for s in data["schemes"] if s["name"] == "fox")
    assert "512" in fox["pruning"]  # the fold prunes from 512 keys on
    # prefix bpb at the full length is the bpb of the 4x evaluation
    for run in data["runs"]:
        long = next(r for r in run["lengths"] if r["length"] == 512)
        assert long["prefix_bpb"]["512"] == pytest.approx(long["bpb"], abs=2e-6)


def test_per_position_standard_errors_match_a_float64_computation(compared):
    """Buckets of the 8x evaluation against the model run in float64 on the same windows, statistics in numpy."""
    out, _, report = compared
    run = report["runs"][1]
    model, cfg = load_model(run["run_dir"])
    model = model.double().eval()
    val = load_tokens(cfg.data.path).val
    row = next(r for r in run["lengths"] if r["length"] == 512)
    windows = val_windows(val, 512, row["windows"])
    with torch.no_grad():
        logits = model(windows[:, :-1])
        losses = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").numpy()
    w = losses.shape[0]
    for key in ("buckets", "octaves"):
        for b in row[key]:
            per_window = [float(np.mean(losses[i, b["lo"] - 1:b["hi"]])) for i in range(w)]
            mean = sum(per_window) / w
            sd = math.sqrt(sum((x - mean) ** 2 for x in per_window) / (w - 1))
            assert b["mean"] == pytest.approx(mean, abs=1e-4), (key, b)
            assert b["se"] == pytest.approx(sd / math.sqrt(w), abs=1e-4), (key, b)
    # the seed mean's standard error in the summary: sqrt(se_0^2 + se_1^2) / 2
    scheme = next(s for s in report["schemes"] if s["name"] == run["scheme"])
    seeds = [r for r in report["runs"] if r["scheme"] == run["scheme"]]
    ses = [next(x for x in s["lengths"] if x["length"] == 512)["octaves"][-1]["se"] for s in seeds]
    assert scheme["position_loss"]["octaves"][-1]["se_mean"] == pytest.approx(
        math.sqrt(sum(x * x for x in ses)) / len(ses), abs=1e-6)


@pytest.mark.parametrize("length,per_octave", [(1, 4), (7, 1), (64, 4), (100, 3), (512, 4), (4096, 4)])
def test_position_buckets_partition_positions_and_end_at_powers_of_two(length, per_octave):
    b = position_buckets(length, per_octave)
    covered = [p for lo, hi in b for p in range(lo, hi + 1)]
    assert covered == list(range(1, length + 1))
    ends = {hi for _, hi in b}
    assert all(2 ** j in ends for j in range(int(math.log2(length)) + 1))


def test_bucket_stats_against_numpy_on_random_losses():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(9, 50, generator=g, dtype=torch.float64) * 4
    arr = losses.numpy()
    for b in bucket_stats(losses, position_buckets(50, 2)):
        per = arr[:, b["lo"] - 1:b["hi"]].mean(axis=1)
        assert b["mean"] == pytest.approx(per.mean(), abs=1e-12)
        assert b["se"] == pytest.approx(per.std(ddof=1) / math.sqrt(9), abs=1e-12)
    assert bucket_stats(losses[:1], [(1, 50)])[0]["se"] is None


@pytest.mark.parametrize("which", ["bpe", "bytes"])
def test_needle_is_placed_at_the_requested_depth(which, bpe, corpus_file):
    """Property test over many lengths and depths, with the tokenizer the runs use."""
    tok = bpe if which == "bpe" else ByteTokenizer()
    hay = np.array(tok.encode(corpus_file.read_text()[:200_000]), dtype=np.uint16)
    parts = NeedleParts(tok)
    rng = random.Random(7)
    lo = min_needle_length(tok)
    for _ in range(300):
        length = rng.randint(lo, 3000)
        depth = rng.choice([0.0, 1.0, round(rng.random(), 3)])
        e = make_example(parts, hay, length, depth, rng)
        ids = e.ids.tolist()
        assert len(ids) == length + 1
        fill = length + 1 - e.needle_len - len(parts.prefix) - e.answer_len
        assert e.needle_start == round(depth * fill)
        needle = tok.decode(ids[e.needle_start:e.needle_start + e.needle_len])
        assert needle == f"\nsecret ={e.answer}\n"
        assert tok.decode(ids[e.answer_start - len(parts.prefix):]) == f"\nsecret ={e.answer}"
        ans = ids[e.answer_start:]
        assert ans == ids[e.needle_answer_start:e.needle_answer_start + len(ans)]
        assert tok.decode(ans) == e.answer and e.answer.strip().isdigit() and len(e.answer.strip()) == 5
        # what is left is one contiguous piece of the haystack, in order
        rest = ids[:e.needle_start] + ids[e.needle_start + e.needle_len:e.answer_start - len(parts.prefix)]
        assert len(rest) == fill
        arr, want = hay.astype(np.int64), np.array(rest, dtype=np.int64)
        starts = np.nonzero(arr[:len(arr) - fill + 1] == want[0])[0]
        assert any(np.array_equal(arr[i:i + fill], want) for i in starts)


class CopyOracle(torch.nn.Module):
    """Predicts the next id of known examples (one-hot logits), optionally wrong at the last answer id of some."""

    def __init__(self, examples, vocab, wrong=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows = {tuple(e.ids[:-1].tolist()): e for e in examples}
        self.vocab, self.wrong = vocab, set(wrong)

    def forward(self, x):
        out = torch.zeros(*x.shape, self.vocab)
        for b, row in enumerate(x):
            e = self.rows[tuple(row.tolist())]
            nxt = e.ids[1:].clone()
            if id(e) in self.wrong:
                nxt[-1] = (nxt[-1] + 1) % self.vocab
            out[b, torch.arange(len(nxt)), nxt] = 1.0
        return out


def test_needle_scoring_counts_exactly_the_answer_ids(bpe, corpus_file):
    hay = np.array(bpe.encode(corpus_file.read_text()[:100_000]), dtype=np.uint16)
    depths = [0.0, 0.5, 1.0]
    exs = make_examples(bpe, hay, 80, depths, 4, seed=3)
    wrong = [id(e) for e in exs[::2]]  # every other example: last answer id wrong
    net = CopyOracle(exs, bpe.vocab_size, wrong)
    rows = needle_accuracy(net, bpe, hay, [80], depths, per_depth=4, seed=3)
    assert rows[0]["exact"] == pytest.approx(0.5)
    answer_ids = sum(e.answer_len for e in exs)
    assert rows[0]["token_accuracy"] == pytest.approx((answer_ids - len(wrong)) / answer_ids)
    perfect = needle_accuracy(CopyOracle(exs, bpe.vocab_size), bpe, hay, [80], depths, per_depth=4, seed=3)
    assert perfect[0]["exact"] == 1.0 and all(d["exact"] == 1.0 for d in perfect[0]["by_depth"])


@pytest.mark.parametrize("extra,needle", [
    (["positions=[rotary,foxx]"], "unknown scheme 'foxx'"),
    (["eval.multiples=[8,1]"], "eval.multiples=[8, 1]: must be strictly increasing"),
    (["eval.multiples=[1,4000]"], "is too long: the validation split"),
    (["trainer.seq_len=8", "eval.multiples=[1,2]", "eval.needle_multiples=[1,2]"], "too short for the needle test"),
    (["eval.needle_depths=[0.5,1.5]"], "eval.needle_depths=[0.5, 1.5]: must be a non-empty list of depths in [0, 1]"),
    (["jobs=0"], "jobs=0: must be >= 1"),
    (["prepare.vocab_sise=10"], "unknown config key 'prepare.vocab_sise'"),
    (["prepare.vocab_size=10"], "invalid value prepare.vocab_size=10: must be >= 258"),
    (["positions=fox"], "'positions=fox': positions is a list; write positions=[fox]"),
    (["seeds=0"], "'seeds=0': seeds is a list; write seeds=[0]"),
])
def test_bad_inputs_fail_in_one_line(extra, needle, corpus_file, compared, capsys):
    out, _, _ = compared
    with pytest.raises(SystemExit) as exc:
        main(tiny_args(corpus_file, out) + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_unknown_scheme_fails_before_preparing_data(corpus_file, tmp_path, capsys):
    out = tmp_path / "fresh"
    with pytest.raises(SystemExit) as exc:
        main(tiny_args(corpus_file, out) + ["positions=[fox,rope]"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "unknown scheme 'rope'" in captured.err and "[prepare]" not in captured.out + captured.err
    assert not (out / "data").exists()  # no BPE trained, no shards written
