"""The self-distilling loop: schedule state, distill runs, their stages and candidates.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"], ["distill_runs.id"], name=op.f(f"fk_{table}_run_id_distill_runs"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "schedule_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.String(128), nullable=False),
        _time("last_run_at", nullable=True),
        _time("next_run_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedule_state")),
    )
    op.create_table(
        "distill_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("schedule", sa.String(64), nullable=True),
        sa.Column("teacher_version", sa.String(16), nullable=True),
        sa.Column("promoted_version", sa.String(16), nullable=True),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _time("data_until", nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(128), nullable=True),
        _time("heartbeat_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'manual')", name=op.f("ck_distill_runs_trigger")
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'refused', 'failed', 'skipped')",
            name=op.f("ck_distill_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_distill_runs")),
    )
    op.create_index(
        "ix_distill_runs_status_created_at", "distill_runs", ["status", "created_at"]
    )
    op.create_table(
        "run_stages",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _time("started_at"),
        _time("finished_at", nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'passed', 'refused', 'failed', 'skipped')",
            name=op.f("ck_run_stages_status"),
        ),
        _run_fk("run_stages"),
        sa.PrimaryKeyConstraint("run_id", "stage", name=op.f("pk_run_stages")),
    )
    op.create_table(
        "run_candidates",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("num_steps", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(16), nullable=True),
        sa.Column("gate_run_id", sa.String(32), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("p50_ratio", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('student', 'teacher-steps')", name=op.f("ck_run_candidates_kind")
        ),
        sa.CheckConstraint(
            "verdict IN ('chosen', 'kept', 'refused')", name=op.f("ck_run_candidates_verdict")
        ),
        _run_fk("run_candidates"),
        sa.PrimaryKeyConstraint("run_id", "name", name=op.f("pk_run_candidates")),
    )


def downgrade() -> None:
    for table in ("run_candidates", "run_stages", "distill_runs", "schedule_state"):
        op.drop_table(table)
