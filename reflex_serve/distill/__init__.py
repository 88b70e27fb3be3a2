"""SnapFlow distillation (arXiv 2604.05656): a 10-step flow-matching teacher -> a 1-step student.

    snapflow.py   the objectives (flow matching + shortcut consistency, or trajectory)
    teacher.py    load_teacher (checks the export), make_student (the teacher at step 0)
    data.py       DataSpec, load_data: labelled observations from a store or a demo dir
    prefix.py     PrefixFeatures: frozen-prefix outputs, cached once per observation
    trainer.py    DistillConfig, distill (resumable run)
    student_export.py  export_student: the student's export directory + parity check
    state_out.py  --state-out: a pi0.5 student whose prompt holds no state (its expert takes it)
    cli.py        ``reflex train distill``
"""

#: Default lambda. The paper's 0.1 (with alpha 0.5 the consistency term weighs 0.05
#: against flow matching's 0.5) gives a student that keeps the teacher's success but
#: commits to a mode of a bimodal task 0.63x as often as its teacher; 1.0 gives 0.87x with
#: the same success (docs/distillation.md, MetaWorld wall tasks, seed set 1,000,000).
DEFAULT_LAMBDA = 1.0
