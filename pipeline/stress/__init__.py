"""Where memories break: evaluation-only documents past the study's, read by every trained run.

- load_<F>:    recall documents of stress.load_length tokens holding F far facts (all asked at the end);
- length_<N>:  recall documents of data.n_eval_facts facts at N tokens past the paper's lengths;
- update_<g>:  one entity stated twice with different values g segments apart (the later value is right), beside
               ordinary facts; a query's answer is the later value, `prior` the earlier one;
- qualifier_<g>: one entity stated twice g segments apart under two qualifiers (speaker tags: "A: is E V1 ." ...
               "B: is E V2 ."), its query naming one ("A: ? is E"): the right answer is that qualifier's value,
               `prior` the other one; half the documents ask the earlier statement, half the later (`asks_later`).

`stress-data` (pipeline/stress/data.py) writes them to data_stress/ with the study's vocabulary and their own seed,
so no split of data/ changes; `stress` (pipeline/stress/evaluate.py) scores each run's best checkpoint on them;
the report turns them into the load, length, update and qualifier tables and the effective length / capacity per variant.
"""

STRESS_DIR = "data_stress"
