"""lm-evaluation-harness model ``xforget``: loglikelihoods equal a float64 computation from the model's
logits, batched == unbatched, generation equals a plain greedy loop, and xforget-eval harness=true runs a
local task (jsonl + task YAML written here) offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from xforget.models.config import ModelConfig
from xforget.models.wrapper import build_model  # noqa: E402
from xforget.integrations.harness import XForgetLM  # noqa: E402

from runs import tiny_bpe_run  # noqa: E402


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=32, depth=2, heads=4, max_seq_len=64, position="fox",
                                    forget_gate_bias_init=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a peaked distribution, so greedy continuations differ
    path = tmp_path_factory.mktemp("hub")
    model.save_pretrained(path)
    return path


def _req(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _reference_logprob(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """float64 log P(last n_cont tokens | the rest), the model run once on the whole sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).double()[0]
    logp = torch.log_softmax(logits, dim=-1)[-n_cont:]
    target = torch.tensor(ids[-n_cont:])
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


PAIRS = [("To be, or not", " to be"), ("", "hello"), ("abc ", "def"), ("The quick brown fox", " jumps over"),
         ("x", "y" * 5)]


def test_loglikelihood_equals_direct_computation_and_batching_changes_nothing(hub_dir):
    one = XForgetLM(pretrained=str(hub_dir), batch_size=1, device="cpu")
    many = XForgetLM(pretrained=str(hub_dir), batch_size=3, device="cpu")
    requests = [_req("loglikelihood", p) for p in PAIRS]
    got, batched = one.loglikelihood(requests), many.loglikelihood(requests)
    for (ctx, cont), (logprob, greedy), (logprob_b, greedy_b) in zip(PAIRS, got, batched):
        if ctx.endswith(" "):  # the harness convention: the boundary space belongs to the continuation
            ctx, cont = ctx.rstrip(), " " + cont
        prefix = list(ctx.encode()) if ctx else [ord("\n")]  # bytes: an empty context is conditioned on "\n"
        ref, ref_greedy = _reference_logprob(one.model, prefix + list(cont.encode()), len(cont.encode()))
        assert logprob == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
        assert logprob_b == pytest.approx(logprob, abs=1e-5) and greedy_b == greedy
    assert any(g for _, g in got) or all(not g for _, g in got)  # a bool per request


def test_context_longer_than_max_length_keeps_the_last_tokens(hub_dir):
    lm = XForgetLM(pretrained=str(hub_dir), batch_size=2, device="cpu", max_length=16)
    ctx, cont = "0123456789" * 3, "abc"
    [(logprob, _)] = lm.loglikelihood([_req("loglikelihood", (ctx, cont))])
    ids = list((ctx + cont).encode())[-17:]  # max_length inputs + the last target
    ref, _ = _reference_logprob(lm.model, ids, 3)
    assert logprob == pytest.approx(ref, abs=1e-4)


def test_loglikelihood_rolling_equals_the_sum_over_disjoint_windows(hub_dir):
    lm = XForgetLM(pretrained=str(hub_dir), batch_size=4, device="cpu", max_length=16)
    short, long = "a short text", "a longer text that needs three windows of sixteen bytes"
    got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (short,)), _req("loglikelihood_rolling", (long,))])
    # short: one window, conditioned on the prefix token
    ref_short, _ = _reference_logprob(lm.model, [10] + list(short.encode()), len(short))
    assert got[0] == pytest.approx(ref_short, abs=1e-4)
    # long: tokens 0..15 from the prefix, then each next 16 tokens given the 16 before them (float64, written out)
    ids = list(long.encode())
    total, done = 0.0, 0
    while done < len(ids):
        end = min(done + 16, len(ids))
        context = [10] + ids[:end] if done == 0 else ids[end - 17:end]
        part, _ = _reference_logprob(lm.model, context, end - done)
        total, done = total + part, end
    assert got[1] == pytest.approx(total, abs=1e-3)


def test_generate_until_equals_a_greedy_loop_without_cache(hub_dir):
    lm = XForgetLM(pretrained=str(hub_dir), batch_size=2, device="cpu")
    prompts = ["To be", "a much longer prompt here"]
    texts = lm.generate_until([_req("generate_until", (p, {"until": ["\x00never"], "max_gen_toks": 6}))
                               for p in prompts])
    for prompt, text in zip(prompts, texts):
        ids = list(prompt.encode())
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(lm.model(torch.tensor([ids]))[0, -1].argmax()))
        expected = bytes(ids[len(prompt):]).decode("utf-8", errors="replace")
        assert text == expected
    # a stop string cuts the text before it
    stop = texts[0][2:4] if len(texts[0]) >= 4 else texts[0][-1:]
    [cut] = lm.generate_until([_req("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 6}))])
    assert cut == texts[0][:texts[0].find(stop)]


def test_bad_arguments_are_clear(hub_dir):
    with pytest.raises(ValueError, match="batch_size='auto'"):
        XForgetLM(pretrained=str(hub_dir), batch_size="auto")
    with pytest.raises(ValueError, match=r"unknown model_args \['temprature'\]"):
        XForgetLM(pretrained=str(hub_dir), temprature=1)


def test_registered_as_xforget():
    from lm_eval.api.registry import get_model

    assert get_model("xforget") is XForgetLM


def _write_task(tmp_path: Path) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"context": "To be, or not", "continuation": " to be", "choices": [" to be", " zq"], "label": 0},
            {"context": "the quick brown", "continuation": " fox", "choices": [" cat", " fox"], "label": 1}]
    (tasks / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'data.jsonl'}\ntest_split: test\n"
    (tasks / "ll.yaml").write_text(f"task: xf_tiny_ll\n{common}output_type: loglikelihood\n"
                                   "doc_to_text: '{{context}}'\ndoc_to_target: '{{continuation}}'\n"
                                   "metric_list:\n  - metric: perplexity\n  - metric: acc\n")
    (tasks / "mc.yaml").write_text(f"task: xf_tiny_mc\n{common}output_type: multiple_choice\n"
                                   "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
                                   "metric_list:\n  - metric: acc\n")
    return tasks


def test_eval_cli_runs_a_local_task_offline_and_writes_results(hub_dir, tmp_path, monkeypatch, capsys):
    from xforget.commands.evaluate import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = _write_task(tmp_path)
    out = tmp_path / "harness.json"
    main(["harness=true", f"checkpoint={hub_dir}", "tasks=[xf_tiny_ll,xf_tiny_mc]", f"include_path={tasks}",
          f"out={out}", "batch_size=2", "eval.device=cpu"])
    printed = capsys.readouterr().out
    assert "xf_tiny_ll" in printed and "xf_tiny_mc" in printed and f"wrote {out}" in printed
    results = json.loads(out.read_text())["results"]

    lm = XForgetLM(pretrained=str(hub_dir), batch_size=1)
    rows = [json.loads(line) for line in (tasks / "data.jsonl").read_text().splitlines()]
    ll = [_reference_logprob(lm.model, list((r["context"] + r["continuation"]).encode()), len(r["continuation"]))
          for r in rows]
    assert results["xf_tiny_ll"]["perplexity,none"] == pytest.approx(
        float(torch.tensor([-v for v, _ in ll]).mean().exp()), rel=1e-4)
    assert results["xf_tiny_ll"]["acc,none"] == pytest.approx(sum(g for _, g in ll) / len(ll))
    picks = []
    for r in rows:
        scores = [_reference_logprob(lm.model, list((r["context"] + c).encode()), len(c))[0] for c in r["choices"]]
        picks.append(int(max(range(len(scores)), key=scores.__getitem__) == r["label"]))
    assert results["xf_tiny_mc"]["acc,none"] == pytest.approx(sum(picks) / len(picks))


def test_lm_eval_command_line_through_harness_cli_scores_like_the_reference(hub_dir, tmp_path):
    """lm-eval 0.4.x loads no model plugins from entry points: `python -m xforget.commands.harness` is its own
    command line with `xforget` registered; a local task's perplexity equals the float64 reference."""
    import os
    import subprocess
    import sys

    tasks = _write_task(tmp_path)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "xforget.commands.harness", "--model", "xforget", "--model_args",
                           f"pretrained={hub_dir}", "--tasks", "xf_tiny_ll", "--include_path", str(tasks),
                           "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["xf_tiny_ll"]
    lm = XForgetLM(pretrained=str(hub_dir), batch_size=1)
    rows = [json.loads(line) for line in (tasks / "data.jsonl").read_text().splitlines()]
    nll = [-_reference_logprob(lm.model, list((r["context"] + r["continuation"]).encode()), len(r["continuation"]))[0]
           for r in rows]
    assert results["perplexity,none"] == pytest.approx(float(torch.tensor(nll).mean().exp()), rel=1e-4)


@pytest.mark.parametrize("argv,needle", [
    (["harness=true", "checkpoint=/no/such/dir", "tasks=[x]"], "no trained model in /no/such/dir"),
    (["harness=true", "tasks=[]"], "harness=true needs tasks="),
    (["harness=true", "tasks=[no_such_task_xyz]"], "unknown harness task(s) ['no_such_task_xyz']"),
])
def test_eval_cli_harness_errors_are_one_line(argv, needle, hub_dir, capsys):
    from xforget.commands.evaluate import main

    argv = [a if not a.startswith("checkpoint") else a for a in argv]
    if not any(a.startswith("checkpoint=") for a in argv):
        argv.append(f"checkpoint={hub_dir}")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_bpe_run_directory_and_its_export_score_through_the_run_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from xforget.data.tokenizer import HFTokenizer
    from xforget.commands.export import main as export_main

    run = tiny_bpe_run(tmp_path, max_steps=3)
    export_main([f"checkpoint={run}", f"out={tmp_path / 'hub'}"])
    assert (tmp_path / "hub" / "tokenizer.json").is_file()

    pairs = [("the cat sat on", " a mat"), ("dogs ran", " far away from home")]
    scores = []
    for source in (run, tmp_path / "hub"):
        lm = XForgetLM(pretrained=str(source), batch_size=2)
        assert isinstance(lm.tokenizer, HFTokenizer) and lm.model.num_tokens == 300
        got = lm.loglikelihood([_req("loglikelihood", p) for p in pairs])
        for (ctx, cont), (logprob, _) in zip(pairs, got):
            whole, head = lm.tokenizer.encode(ctx + cont), lm.tokenizer.encode(ctx)
            ref, _ = _reference_logprob(lm.model, whole, len(whole) - len(head))
            assert logprob == pytest.approx(ref, abs=1e-4)
        scores.append(got)
    assert scores[0] == scores[1]  # the run directory and its export are the same model and tokenizer
