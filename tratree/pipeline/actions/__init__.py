"""Stage code: one module per kind of stage. Each reads its inputs' local directories and writes
its outputs into its own directory; the runner (local or a Kubernetes Job) stores them."""

from __future__ import annotations

from tratree.pipeline.actions.context import Action


def action(name: str) -> Action:
    """The code of an action, imported only when a stage of that kind runs."""
    from tratree.pipeline.actions import data, evaluation, report, training

    table: dict[str, Action] = {
        "expert": data.expert,
        "corpus": data.corpus,
        "pretrain": training.pretrain,
        "tokenizer": training.tokenizer,
        "explore": data.explore,
        "trees": data.trees,
        "pairs": data.pairs,
        "mcts": data.mcts,
        "sft": training.sft,
        "dpo": training.dpo,
        "evaluate": evaluation.evaluate,
        "report": report.report,
    }
    return table[name]
