"""The versioning router: export locations, routing slots, swaps, shadow comparisons.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SLOTS = ("active", "shadow", "canary")


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("location", sa.Text(), nullable=True))

    slots = op.create_table(
        "router_slots",
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(80), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        _time("updated_at"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "slot IN ('active', 'shadow', 'canary')", name=op.f("ck_router_slots_slot")
        ),
        sa.ForeignKeyConstraint(
            ["digest"],
            ["model_versions.digest"],
            name=op.f("fk_router_slots_digest_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_router_slots")),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        slots,
        [
            {"slot": s, "digest": None, "fraction": 0.0, "revision": 0, "updated_at": now,
             "actor": "migration", "reason": "empty slot"}
            for s in SLOTS
        ],
    )

    op.create_table(
        "swaps",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("from_digest", sa.String(80), nullable=True),
        sa.Column("to_digest", sa.String(80), nullable=False),
        sa.Column("from_version", sa.String(16), nullable=True),
        sa.Column("to_version", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("signal", sa.String(32), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("replica", sa.String(128), nullable=False),
        _time("started_at"),
        _time("finished_at", nullable=True),
        _time("monitor_until", nullable=True),
        sa.CheckConstraint("kind IN ('promote', 'rollback')", name=op.f("ck_swaps_kind")),
        sa.CheckConstraint(
            "status IN ('failed', 'monitoring', 'kept', 'rolled_back', 'superseded', 'done')",
            name=op.f("ck_swaps_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_swaps")),
    )
    op.create_index(op.f("ix_swaps_status"), "swaps", ["status"])
    op.create_index(op.f("ix_swaps_to_digest"), "swaps", ["to_digest"])
    op.create_index(op.f("ix_swaps_started_at"), "swaps", ["started_at"])

    op.create_table(
        "shadow_comparisons",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _time("at"),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("candidate_version", sa.String(16), nullable=False),
        sa.Column("reference_version", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("episode_id", sa.String(128), nullable=True),
        sa.Column("divergence", sa.Float(), nullable=False),
        sa.Column("max_abs_diff", sa.Float(), nullable=False),
        sa.Column("candidate_ms", sa.Float(), nullable=False),
        sa.Column("reference_ms", sa.Float(), nullable=False),
        sa.Column("shared_prefix", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "mode IN ('shadow', 'monitor')", name=op.f("ck_shadow_comparisons_mode")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_comparisons")),
    )
    op.create_index(
        "ix_shadow_comparisons_candidate_version_at",
        "shadow_comparisons",
        ["candidate_version", "at"],
    )


def downgrade() -> None:
    for table in ("shadow_comparisons", "swaps", "router_slots"):
        op.drop_table(table)
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("location")
