"""bench.sweep_k's table: means over seeds and their ratios to the smallest and previous k."""

from bench.sweep_k import KTable, ratio_rows


def test_each_k_is_compared_with_the_smallest_and_the_previous_k() -> None:
    table = KTable(
        metrics={
            1: {"eval_mse_after_32": [2.0, 4.0]},
            5: {"eval_mse_after_32": [0.5, 1.5]},
            10: {"eval_mse_after_32": [0.25, 0.75]},
        },
        seconds={1: [10.0, 12.0], 5: [30.0, 32.0], 10: [60.0, 62.0]},
        tasks_seen=3000,
    )
    assert ratio_rows(table) == [
        ["1", "3.000 ± 1.414", "1.00", "-", "11"],
        ["5", "1.000 ± 0.707", "0.33", "0.33", "31"],
        ["10", "0.500 ± 0.354", "0.17", "0.50", "61"],
    ]
