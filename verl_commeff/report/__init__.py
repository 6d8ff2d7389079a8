"""The ``verl-commeff report`` pipeline: read runs, detect spirals, write figures and a verdict.

Modules:
    readers: the three metric formats (verl JSONL, TensorBoard, wandb CSV) behind one reader.
    spiral: the response-length spiral detector.
    verdict: the val@k table, the gate and the floor.
    figures: the seed's Figures 1, 2 and 4.
    builder: glue that checks what each output needs and writes it all to one directory.
"""

from verl_commeff.report.errors import ReportError

__all__ = ["ReportError"]
