"""SnapFlow distillation (arXiv 2604.05656): a 10-step flow-matching teacher -> a 1-step student.

    snapflow.py   the objectives (flow matching + shortcut consistency, or trajectory)
    teacher.py    load_teacher (checks the export), make_student (the teacher at step 0)
    data.py       DataSpec, load_data: labelled observations from a store or a demo dir
    prefix.py     PrefixFeatures: frozen-prefix outputs, cached once per observation
    trainer.py    DistillConfig, distill (resumable run), export_student
    cli.py        ``reflex train distill``
"""
