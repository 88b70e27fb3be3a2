"""Gate runs, gate results and audited overrides (the 9-gate evaluator).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _time(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "gate_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("candidate_digest", sa.String(80), nullable=False),
        sa.Column("candidate_version", sa.String(16), nullable=False),
        sa.Column("reference_digest", sa.String(80), nullable=False),
        sa.Column("reference_version", sa.String(16), nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_digest"],
            ["model_versions.digest"],
            name=op.f("fk_gate_runs_candidate_digest_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_runs")),
    )
    op.create_index(
        "ix_gate_runs_candidate_digest_started_at",
        "gate_runs",
        ["candidate_digest", "started_at"],
    )

    op.create_table(
        "gate_results",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("gate", sa.String(8), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("comparison", sa.String(4), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("evidence", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.CheckConstraint("kind IN ('safety', 'performance')", name=op.f("ck_gate_results_kind")),
        sa.CheckConstraint(
            "verdict IN ('pass', 'fail', 'not_evaluated')", name=op.f("ck_gate_results_verdict")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["gate_runs.id"],
            name=op.f("fk_gate_results_run_id_gate_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "gate", name=op.f("pk_gate_results")),
    )

    op.create_table(
        "gate_overrides",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("gate", sa.String(8), nullable=False),
        sa.Column("operator", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("refusal", sa.Text(), nullable=True),
        _time("at"),
        sa.CheckConstraint(
            "status IN ('accepted', 'refused')", name=op.f("ck_gate_overrides_status")
        ),
        sa.ForeignKeyConstraint(
            ["digest"],
            ["model_versions.digest"],
            name=op.f("fk_gate_overrides_digest_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["gate_runs.id"],
            name=op.f("fk_gate_overrides_run_id_gate_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_overrides")),
    )
    op.create_index(op.f("ix_gate_overrides_digest"), "gate_overrides", ["digest"])
    op.create_index(op.f("ix_gate_overrides_run_id"), "gate_overrides", ["run_id"])


def downgrade() -> None:
    for table in ("gate_overrides", "gate_results", "gate_runs"):
        op.drop_table(table)
