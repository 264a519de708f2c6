"""``trainer.max_time``: parsing, the choice of steps (against a step-by-step reference), budgeted runs under a
fake clock (within the budget, the chosen horizon, a slower and a faster machine, SIGTERM and resume = the
uninterrupted run), and one run on the real clock with deliberately slowed steps."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from corpus import TEXT  # generated text (tests/corpus.py)
from runs import steps_logged

from xforget.errors import ConfigError
from xforget.train import compose_config, to_train_config, train
from xforget.train.budget import (FINAL_SLACK, VALID_FORMS, BudgetPlan, TimeBudget, format_seconds, parse_duration,
                                  plan_steps)
from xforget.train.checkpoint import complete_checkpoints
from xforget.train.compile import AUTO_MIN_SECONDS, resolve_compile
from xforget.train.metrics import read_metrics
from xforget.train.schedule import lr_factor

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
    "data=text", f"data.path={TEXT}", "trainer.progress=false", "trainer.sample_bytes=0",
    "trainer.eval_batches=2", "trainer.threads=1", "trainer.warmup_steps=20", "optim.lr=3e-3",
    "trainer.log_every=1", "trainer.precision=fp32", "trainer.eval_every=20", "trainer.checkpoint_every=20",
]
FAKE = "step=0.5,eval=2,checkpoint=0.25"  # seconds of the fake clock per step, evaluation, checkpoint write


def cfg_of(*overrides: str):
    return to_train_config(compose_config([*TINY, *overrides]))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("value,seconds", [
    (600, 600.0), (90.5, 90.5), ("600", 600.0), ("90s", 90.0), ("90 s", 90.0), ("45sec", 45.0),
    ("10min", 600.0), ("1.5min", 90.0), ("1h", 3600.0), ("1.5h", 5400.0), ("0.25h", 900.0), ("10MIN", 600.0),
    ("1e3", 1000.0), (None, None), ("null", None),
])
def test_max_time_accepts_seconds_and_s_min_h(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [-5, 0, 0.0, "-1min", "0s", "10 parsecs", "10m", "ten minutes", "1h30min",
                                   "inf", "nan", "", "min", True])
def test_bad_max_time_is_one_line_naming_the_valid_forms(value):
    if value == "":  # empty means "not set", like null
        assert parse_duration(value) is None
        return
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    message = str(info.value)
    assert "\n" not in message and f"trainer.max_time={value!r}" in message and VALID_FORMS in message


def test_bad_max_time_fails_the_command_with_exit_2_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "xforget.train", *TINY, "trainer.max_time=10 parsecs",
                           f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid value trainer.max_time='10 parsecs'"), lines
    assert VALID_FORMS in lines[0] and not run.exists()
    with pytest.raises(ConfigError, match="trainer.max_steps and trainer.max_time are both null"):
        cfg_of("trainer.max_time=null")
    with pytest.raises(ConfigError, match=r"trainer.max_time='-3'.*\(600, 90.5\)"):
        cfg_of("trainer.max_time=-3")


def test_a_budget_compiles_when_it_is_long_enough(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    cpu = torch.device("cpu")
    assert resolve_compile("auto", None, cpu, 600.0)[0] is True  # the default run
    assert resolve_compile("auto", None, cpu, AUTO_MIN_SECONDS - 1)[0] is False
    assert resolve_compile("auto", 40, cpu, 600.0)[0] is False  # max_steps ends first, and soon
    default = to_train_config(compose_config([])).trainer
    assert (default.max_steps, default.max_time) == (None, "10min")


# --------------------------------------------------------------------------- the choice of steps


def _reference_steps(budget, step, elapsed, step_s, eval_s, ckpt_s, eval_every, ckpt_every, margin):
    """Walk the run step by step, adding each step's cost, and each evaluation and checkpoint where the loop
    does one (every N steps, and the last step): the last step count whose run ends within the budget."""
    best, n = None, step
    while True:
        n += 1
        t = elapsed + (n - step) * step_s
        for s in range(step + 1, n + 1):
            t += eval_s * (s == n or (eval_every > 0 and s % eval_every == 0))
            t += ckpt_s * (s == n or (ckpt_every > 0 and s % ckpt_every == 0))
        if t > budget * (1 - margin):
            return best
        best = n


@pytest.mark.parametrize("budget,step,elapsed,step_s,eval_s,ckpt_s,eval_every,ckpt_every", [
    (600, 22, 40.0, 0.49, 4.0, 0.3, 250, 250),  # the default run's shape
    (600, 12, 30.0, 2.05, 4.0, 0.3, 250, 250),  # a slow CPU
    (75, 12, 31.0, 0.043, 0.5, 0.1, 250, 250),  # a GPU: compiling took most of the budget
    (50, 3, 1.0, 0.1, 0.7, 0.05, 7, 0),
    (50.3, 3, 1.0, 0.1, 0.7, 0.05, 0, 3),  # (50 s ties the reference to the last float bit)
    (20, 0, 0.0, 0.37, 0.0, 0.0, 1, 1),
])
def test_plan_steps_is_the_largest_count_that_fits_the_budget(budget, step, elapsed, step_s, eval_s, ckpt_s,
                                                              eval_every, ckpt_every):
    kwargs = dict(budget_s=budget, step=step, elapsed_s=elapsed, step_s=step_s, eval_s=eval_s, checkpoint_s=ckpt_s,
                  eval_every=eval_every, checkpoint_every=ckpt_every)
    plan = plan_steps(**kwargs, margin=0.03)
    assert plan.steps == plan.budget_steps == _reference_steps(budget, step, elapsed, step_s, eval_s, ckpt_s,
                                                              eval_every, ckpt_every, 0.03)
    assert plan.end_s <= budget * 0.97 and plan.ends_first == "max_time"
    assert plan_steps(**kwargs, margin=0.03) == plan  # a pure function of its inputs
    evals = sum(1 for s in range(step + 1, plan.steps + 1) if s == plan.steps or (eval_every and s % eval_every == 0))
    assert plan.evaluations == evals
    # with a step limit: whichever ends first
    assert plan_steps(**kwargs, max_steps=plan.steps - 1).steps == plan.steps - 1
    assert plan_steps(**kwargs, max_steps=plan.steps - 1).ends_first == "max_steps"
    assert plan_steps(**kwargs, max_steps=plan.steps + 50).steps == plan.steps
    assert BudgetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_budget_too_small_for_one_evaluation_names_the_minimum():
    kwargs = dict(step=12, elapsed_s=20.0, step_s=0.5, eval_s=6.0, checkpoint_s=0.5, eval_every=250,
                  checkpoint_every=250, margin=0.03)
    with pytest.raises(ConfigError) as info:
        plan_steps(budget_s=25, **kwargs)
    minimum = math.ceil((20.0 + 0.5 + 6.0 + 0.5) / 0.97)
    assert f"at least trainer.max_time={minimum}s" in str(info.value) and "\n" not in str(info.value)
    assert plan_steps(budget_s=minimum, **kwargs).steps == 13  # the minimum itself fits one more step


@pytest.mark.parametrize("budget_s", [25, 25.0, 90, 90.0])
def test_the_budget_is_formatted_alike_in_the_log_and_in_the_error(budget_s):
    """Before: '90.0 s' in the log line, '90 s' in the error of the same budget. One formatter."""
    kwargs = dict(step=12, elapsed_s=100.0, step_s=0.5, eval_s=6.0, checkpoint_s=0.5, eval_every=250,
                  checkpoint_every=250, margin=0.03)
    with pytest.raises(ConfigError) as info:
        plan_steps(budget_s=budget_s, **kwargs)
    shown = format_seconds(budget_s)
    assert f"trainer.max_time={shown}:" in str(info.value)
    assert shown == f"{int(budget_s)} s" and format_seconds(float(budget_s) + 0.25) == f"{budget_s + 0.25:.1f} s"


# --------------------------------------------------------------------------- budgeted runs (fake clock)


def _state(run: Path) -> dict:
    (_, last), *_ = complete_checkpoints(run)[-1:]
    return torch.load(last / "state.pt", weights_only=False)


def test_a_budgeted_run_stops_within_the_budget_at_the_horizon_it_chose(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", FAKE)
    run = tmp_path / "run"
    result = train(cfg_of("trainer.max_time=60"), run)
    saved = json.loads((run / "budget.json").read_text())
    plan = BudgetPlan.from_dict({k: v for k, v in saved.items() if k not in ("max_steps", "line")})
    # calibrated on 10 timed steps after the first, within the warmup: 0.5 s/step, one evaluation, one checkpoint
    assert (plan.decided_at, plan.step_s, plan.eval_s, plan.checkpoint_s) == (11, 0.5, 2.0, 0.25)
    assert plan == plan_steps(budget_s=60, step=11, elapsed_s=11 * 0.5 + 2 + 0.25, step_s=0.5, eval_s=2, checkpoint_s=0.25,
                              eval_every=20, checkpoint_every=20)
    assert result.step == plan.steps and result.elapsed_s <= 60 and not result.budget_stopped
    assert result.elapsed_s == pytest.approx(plan.end_s)  # the fake clock is exactly as calibrated
    state = _state(run)
    assert state["schedule_max_steps"] == plan.steps and state["budget"] == plan.to_dict()
    lrs = {r["step"]: r["lr"] for r in read_metrics(run)}
    for step in (plan.steps - 30, plan.steps):  # the cosine ends at the chosen step
        assert lrs[step] == pytest.approx(3e-3 * lr_factor(step - 1, warmup_steps=20, max_steps=plan.steps,
                                                           min_lr_ratio=0.1), rel=1e-9)
    log = (run / "train.log").read_text()
    assert result.budget_line in log and f"budget 60 s: {plan.steps} steps at 0.5 s/step, 5 evaluations" in log
    first = next(line for line in log.splitlines() if "| device " in line)
    assert "fp32: trainer.precision=fp32" in first and "budget 60 s of training (trainer.max_time)" in first


def test_max_steps_and_max_time_whichever_ends_first(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", FAKE)
    short = train(cfg_of("trainer.max_time=60", "trainer.max_steps=40"), tmp_path / "steps")
    assert short.step == 40 and "trainer.max_steps=40 ends first (the budget fits" in short.budget_line
    assert _state(tmp_path / "steps")["schedule_max_steps"] == 40
    long = train(cfg_of("trainer.max_time=30", "trainer.max_steps=1000"), tmp_path / "time")
    assert long.step < 1000 and "the budget ends first (trainer.max_steps=1000)" in long.budget_line
    assert _state(tmp_path / "time")["schedule_max_steps"] == long.step and long.elapsed_s <= 30


def test_a_slower_machine_still_stops_at_the_budget_and_says_so(tmp_path, monkeypatch):
    # calibrated at 0.5 s/step, then every step from step 30 on takes 1.5 s
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", FAKE + ",slow_from=30,slow_step=1.5")
    run = tmp_path / "run"
    result = train(cfg_of("trainer.max_time=60"), run)
    planned = json.loads((run / "budget.json").read_text())["steps"]
    assert result.budget_stopped and result.step < planned and result.elapsed_s <= 60
    assert f"time budget: ending at step {result.step} of the {planned} planned" in (run / "train.log").read_text()
    records = read_metrics(run)
    assert records[-1]["step"] == result.step and "val_bpb" in records[-1]  # the last evaluation
    assert complete_checkpoints(run)[-1][0] == result.step  # and the last checkpoint


def test_an_unsteady_machine_calibrates_for_at_most_a_tenth_of_the_budget():
    budget = TimeBudget(100.0, warmup_steps=1000, skip=1)
    times = [0.5 * 1.05 ** i for i in range(400)]  # a machine slowing down: the halves never agree
    done = next(step for step, s in enumerate(times, 1) if budget.observe(step, s))
    assert 10.0 <= sum(times[1:done]) < 10.0 + max(times)


def test_the_guard_scales_evaluation_and_checkpoint_costs_by_the_steps_slowdown():
    plan = plan_steps(budget_s=100, step=10, elapsed_s=10, step_s=1.0, eval_s=10.0, checkpoint_s=1.0,
                      eval_every=0, checkpoint_every=0)
    budget = TimeBudget(100.0, warmup_steps=0, skip=0, plan=plan)
    budget.observe(50, 1.0)
    slack = FINAL_SLACK * (10 + 1)  # the final evaluation and checkpoint, with the guard's allowance
    assert not budget.must_stop(99.9 - 1 - slack, eval_here=False, checkpoint_here=False)
    assert budget.must_stop(100.1 - 1 - slack, eval_here=False, checkpoint_here=False)
    budget.recent.clear()
    budget.observe(51, 2.0)  # twice as slow: the step, the evaluation and the checkpoint cost twice as much
    assert budget.must_stop(100.1 - 2 - 2 * slack, eval_here=False, checkpoint_here=False)
    assert not budget.must_stop(99.9 - 2 - 2 * slack, eval_here=False, checkpoint_here=False)


def test_the_guard_budgets_the_final_evaluation_at_least_as_long_as_a_measured_one():
    plan = plan_steps(budget_s=100, step=10, elapsed_s=10, step_s=1.0, eval_s=10.0, checkpoint_s=1.0,
                      eval_every=0, checkpoint_every=0)
    budget = TimeBudget(100.0, warmup_steps=0, skip=0, plan=plan)
    budget.observe(50, 1.0)
    at = 99.9 - 1 - FINAL_SLACK * (10 + 1)
    assert not budget.must_stop(at, eval_here=False, checkpoint_here=False)
    budget.observe_eval(14.0)  # a mid-run evaluation took longer than calibrated, with steps at full speed
    assert budget.must_stop(at, eval_here=False, checkpoint_here=False)


def test_a_faster_machine_does_not_overrun_the_chosen_step_count(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", FAKE + ",slow_from=15,slow_step=0.1")  # 5x faster from step 15
    run = tmp_path / "run"
    result = train(cfg_of("trainer.max_time=60"), run)
    assert result.step == json.loads((run / "budget.json").read_text())["steps"] and result.elapsed_s < 40


def test_a_budget_too_small_for_the_run_fails_naming_the_minimum(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", "step=0.5,eval=30,checkpoint=0.25")
    with pytest.raises(ConfigError, match=r"too short for this run on this machine.*at least trainer.max_time=\d+s"):
        train(cfg_of("trainer.max_time=20"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"calibration alone took .* use at least trainer.max_time=\d+s"):
        train(cfg_of("trainer.max_time=3"), tmp_path / "run2")


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_sigterm_then_resume_continues_the_same_horizon_with_identical_losses(tmp_path, monkeypatch):
    args = [*TINY, "trainer.max_time=60", "model.dropout=0.1"]
    monkeypatch.setenv("XFORGET_DEBUG_FAKE_CLOCK", FAKE)
    full = train(to_train_config(compose_config(args)), tmp_path / "full")

    run = tmp_path / "run"
    env = _env(XFORGET_DEBUG_FAKE_CLOCK=FAKE, XFORGET_DEBUG_STEP_SLEEP="0.1")  # slow in real time: catchable
    command = [sys.executable, "-m", "xforget.train", *args, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or steps_logged(run) < 25:  # past the calibration (step 11)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    stopped = complete_checkpoints(run)[-1][0]
    assert stopped >= 25 and _state(run)["budget"]["steps"] == full.step

    again = subprocess.run(command, cwd=tmp_path, env=_env(XFORGET_DEBUG_FAKE_CLOCK=FAKE), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed the time budget's decision: budget 60 s" in again.stderr
    assert _state(run)["schedule_max_steps"] == full.step == _state(tmp_path / "full")["schedule_max_steps"]
    records = {r["step"]: r["train_loss"] for r in read_metrics(run)}
    assert sorted(records) == list(range(1, full.step + 1))
    assert all(records[s] == full.losses[s] for s in records)  # exactly the uninterrupted run
    assert f"val_bpb={full.val_bpb:.4f}" in again.stdout


# --------------------------------------------------------------------------- the real clock


def test_on_the_real_clock_slowed_steps_stop_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_DEBUG_STEP_SLEEP", "0.05")  # each step >= 50 ms: ~60 steps fit in 4 s
    run = tmp_path / "run"
    result = train(cfg_of("trainer.max_time=4s"), run)
    planned = json.loads((run / "budget.json").read_text())
    assert result.elapsed_s <= 4.0 and planned["step_s"] >= 0.05
    assert result.step == planned["steps"] or result.budget_stopped
    assert _state(run)["schedule_max_steps"] == planned["steps"]
