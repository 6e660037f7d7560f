"""The training loop's schedule of periodic actions (loop.itstime) and the train module's names."""

import pytest

from u2net_jax.train import loop, train


@pytest.mark.parametrize("every, total, last, first, due", [
    (2, 6, True, False, [2, 4, 6]),
    (2, 6, False, False, [2, 4]),  # the final checkpoint/evaluation come after the loop
    (3, 7, True, False, [3, 6, 7]),  # the last step even off the grid
    (3, 7, False, False, [3, 6]),
    (4, 8, True, True, [1, 4, 8]),
    (1, 3, False, False, [1, 2]),
    (0, 5, False, False, []),  # 0: never (eval_every=0: only the final evaluation)
    (0, 5, True, False, [5]),
    (0, 5, True, True, [5]),  # `first` needs a period
    (10, 4, True, False, [4]),  # a period longer than the run
])
def test_itstime_hand_cases(every, total, last, first, due):
  got = [s for s in range(1, total + 1) if loop.itstime(s, every, total, first=first, last=last)]
  assert got == due


def test_itstime_is_the_loops_former_conditions():
  # The log line: `step % log_every == 0 or step == total`; a checkpoint and an
  # evaluation along the way: `every and step % every == 0 and step < total`.
  for total in range(1, 13):
    for every in range(0, 6):
      for step in range(1, total + 1):
        if every:
          assert loop.itstime(step, every, total) == (step % every == 0 or step == total)
        assert loop.itstime(step, every, total, last=False) == bool(
            every and step % every == 0 and step < total)


def test_train_module_keeps_its_names():
  # Callers and tests reach the split modules' functions through `train`.
  for name in ("train_and_evaluate", "evaluate_workdir", "restore_params", "build_train_state",
               "make_mesh", "make_train_step", "learning_rate", "make_predict_fn",
               "run_evaluation", "independent_config", "extension_report", "make_summary",
               "write_summary", "print_table", "architecture", "check_architecture",
               "split_model", "ModelParts", "TrainingError", "maybe_initialize_distributed",
               "_with_overrides", "_enable_compilation_cache", "_load_base", "_Preemption"):
    assert hasattr(train, name), name
  assert train.Restored._fields == ("model", "parts", "params", "specs", "step")
