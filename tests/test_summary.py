"""The run's summary: what `eval/summary.json` keeps and the console table says."""

from u2net_jax.train import summary


def _result(dice, raw=None):
  r = {"dice": {"organ": dice}, "mean_dice": dice, "hd95_mm": {"organ": 1.0},
       "surface_dice": {"organ": 0.9}, "cases": 2, "grid": "preprocessed", "per_case": []}
  if raw is not None:
    r.update(dice_raw={"organ": raw}, mean_dice_raw=raw)
  return r


COUNTS = {"shared": 10, "per_domain": 5, "total": 15}
META = {"heart": {"threshold_baseline_dice": 0.2}, "liver": {"threshold_baseline_dice": 0.3}}


def test_post_processed_summary_keeps_the_dice_before_it_and_the_table_shows_both():
  results = {"heart": _result(0.92, raw=0.88), "liver": _result(0.90, raw=0.86)}
  s = summary.make_summary(100, "separable", results, META, COUNTS, 12.0)
  assert s["domains"]["heart"]["mean_dice_raw"] == 0.88
  assert s["domains"]["liver"]["dice_raw"] == {"organ": 0.86}
  lines = []
  summary.print_table(s, lines.append)
  assert "raw" in lines[0]
  assert "0.920  0.880" in lines[1]
  assert lines[-1] == "mean over domains: 0.910 (before post-processing 0.870)"


def test_summary_without_post_processing_has_no_raw_column():
  s = summary.make_summary(100, "separable", {"heart": _result(0.92)}, META, COUNTS, None)
  assert "mean_dice_raw" not in s["domains"]["heart"]
  lines = []
  summary.print_table(s, lines.append)
  assert "raw" not in lines[0] and lines[-1] == "mean over domains: 0.920"
