"""Evaluation: per-position loss, bpb, length extrapolation, synthetic tasks, the xforget-eval CLI."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper
from xforget.data import synthetic
from xforget.evaluate import evaluate_model, evaluate_windows, task_accuracy
from xforget.evaluate.core import CANNOT_EXTRAPOLATE, OK


def tiny(position="fox", max_seq_len=32):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=256, max_seq_len=max_seq_len,
                              attn_layers=Decoder(32, 1, 2, position=position)).eval()


@pytest.mark.parametrize("position", ["fox", "absolute"])
def test_per_position_loss_averages_to_the_validation_loss(position):
    net = tiny(position)
    windows = torch.randint(0, 256, (7, 25))
    ev = evaluate_windows(net, windows, batch_tokens=48)  # several batches, one of them short
    overall = AutoregressiveWrapper(net)(windows).item()  # independent: the training loss, mean reduction
    assert len(ev.per_position) == 24
    assert sum(ev.per_position) / len(ev.per_position) == pytest.approx(overall, abs=1e-6)
    assert ev.loss == pytest.approx(overall, abs=1e-6)
    assert ev.bpb == pytest.approx(overall / math.log(2), abs=1e-6)
    # each entry is the loss at that target index: predicting token i + 1 from the prefix 0..i only
    for i in (0, 5, 23):
        prefix = windows[:, : i + 2]
        logits = net(prefix[:, :-1])[:, -1]
        assert ev.per_position[i] == pytest.approx(F.cross_entropy(logits, prefix[:, -1]).item(), abs=1e-5)


def test_length_extrapolation_statuses_and_window_counts():
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    rows = evaluate_model(tiny("absolute"), val, [32, 64], tokens=256, multiples=[1, 2])
    assert rows[0]["status"] == OK and rows[0]["windows"] == 8
    assert rows[1]["status"] == CANNOT_EXTRAPOLATE and "bpb" not in rows[1]
    rows = evaluate_model(tiny("alibi"), val, [32, 64, 256, 4096], tokens=256)
    assert [r["status"] for r in rows[:3]] == [OK, OK, OK]
    assert [r["windows"] for r in rows[:3]] == [8, 4, 1]
    assert len(rows[2]["per_position"]) == 256
    assert rows[3]["status"] != OK  # 4096 + 1 bytes do not fit in 3000 validation bytes


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_synthetic_generators_are_deterministic_and_solvable(task):
    for length in (synthetic.min_length(task), 77, 300):
        a = synthetic.generate_examples(task, 16, length, seed=3)
        assert [e.text for e in a] == [e.text for e in synthetic.generate_examples(task, 16, length, seed=3)]
        assert [e.text for e in a] != [e.text for e in synthetic.generate_examples(task, 16, length, seed=4)]
        for ex in a:
            assert len(ex.text) == length and ex.answers and len(ex.answers) == len(ex.sources)
            assert all(s < a_ for a_, s in zip(ex.answers, ex.sources))
            for ans, src in zip(ex.answers, ex.sources):
                assert ex.text[ans] == ex.text[src]  # the answer is a copy of its source byte
                # the oracle sees only the bytes before the answer and gets it right (100%)
                assert synthetic.oracle_answer(task, ex.text[:ans]) == ex.text[ans:ans + 1]
    # the answer really depends on the source: change the source byte and the oracle follows it
    ex = synthetic.generate_examples(task, 1, 120, seed=0)[0]
    ans, src = ex.answers[0], ex.sources[0]
    new = b"7" if ex.text[src:src + 1] != b"7" else b"8"
    changed = ex.text[:src] + new + ex.text[src + 1:]
    assert synthetic.oracle_answer(task, changed[:ans]) == new


def test_synthetic_stream_and_corpus():
    stream = synthetic.synthetic_stream("mqar", seed=1, num_bytes=1000, example_len=100)
    assert len(stream.text) == 1000 and len(stream.answers) == 10 * ((100 - 2) // 10)
    assert all(stream.text[a] == stream.text[s] for a, s in zip(stream.answers, stream.sources))
    corpus = synthetic.load_synthetic("needle", num_bytes=4096)
    assert corpus.name == "needle" and len(corpus.data) == 4096 and corpus.meta["answers"] == 4 * 32


class OracleNet(nn.Module):
    """Logits that put all mass on the oracle's answer where it has one (uniform elsewhere)."""

    def __init__(self, task):
        super().__init__()
        self.task, self.dummy = task, nn.Parameter(torch.zeros(()))
        self.pos_emb = None

    def forward(self, x):
        out = torch.zeros(*x.shape, 256)
        for b in range(x.shape[0]):
            row = bytes(x[b].tolist())
            for i in range(x.shape[1]):
                try:
                    ans = synthetic.oracle_answer(self.task, row[: i + 1])
                except (KeyError, IndexError):
                    continue
                if len(ans) == 1:
                    out[b, i, ans[0]] = 10.0
        return out


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_task_accuracy_scores_the_answer_bytes(task):
    rows = task_accuracy(OracleNet(task), task, [48, 96], examples=4, seed=5)
    assert [r["status"] for r in rows] == [OK, OK]
    assert all(r["accuracy"] == 1.0 for r in rows)
    assert sum(b["n"] for b in rows[1]["by_position"]) == rows[1]["answers"]
    rows = task_accuracy(tiny("fox"), task, [48], examples=4, seed=5)  # untrained: far from perfect
    assert rows[0]["accuracy"] < 0.5


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from xforget.train import compose_config, to_train_config, train

    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    data = tmp_path_factory.mktemp("evaldata") / "text.txt"
    rng = random.Random(0)
    data.write_bytes(" ".join(rng.choice(["to", "be", "or", "not", "that", "is"]) for _ in range(4000)).encode())
    cfg = to_train_config(compose_config([
        "data=text", f"data.path={data}", "model=rotary", "model.dim=32", "model.depth=1", "model.heads=2",
        "trainer.seq_len=32", "trainer.batch_size=4", "trainer.max_steps=4", "trainer.eval_batches=2",
        "trainer.progress=false", "trainer.sample_bytes=0", "trainer.log_every=2",
        "trainer.precision=fp32"]))  # its val_bpb is compared with xforget-eval's fp32 score
    result = train(cfg, run_dir)
    return run_dir, result


def test_eval_cli_matches_training_and_writes_json(trained_run, capsys, tmp_path):
    from xforget.commands.evaluate import main

    run_dir, result = trained_run
    out = tmp_path / "e.json"
    main([f"checkpoint={run_dir}", "eval.multiples=[1,2]", f"out={out}"])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["checkpoint_step"] == 4 and [r["length"] for r in data["lengths"]] == [32, 64]
    # at 1x with the default token budget these are the training run's own validation windows
    assert data["val_bpb"] == pytest.approx(result.val_bpb, abs=1e-5)
    assert f"{data['val_bpb']:.4f}" in printed
    main([f"checkpoint={run_dir}", "eval.seq_len=16", "eval.multiples=[1]", "eval.tokens=64", "eval.task=mqar",
          "data.val_fraction=0.1"])
    data = json.loads((run_dir / "eval.json").read_text())
    assert data["lengths"][0]["windows"] == 4 and data["data"]["name"] == "text"
    assert data["data"]["val_bytes"] == int(data["data"]["bytes"] * 0.1)
    assert data["task"]["name"] == "mqar" and data["task"]["lengths"][0]["status"] == OK


@pytest.mark.parametrize("args, needle", [
    (["eval.seq_lne=3"], "valid keys of eval: ['seq_len'"),
    (["bogus=1"], "valid keys of the top level: ['checkpoint', 'data', 'eval', 'out', 'harness'"),
    (["data.pth=x"], "valid keys of data: ['name', 'path'"),
    (["eval.multiples=[0]"], "eval.multiples"),
])
def test_eval_cli_rejects_bad_keys_in_one_line(trained_run, capsys, args, needle):
    from xforget.commands.evaluate import main

    with pytest.raises(SystemExit) as exc:
        main([f"checkpoint={trained_run[0]}", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
