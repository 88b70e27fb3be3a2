"""Initial schema: episodes, requests, images, request_images, model_versions,
version_transitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Later work (distill runs, gate runs and results, overrides, swaps / rollbacks) adds
revisions 0002, 0003, ... on top of this one: keep the history linear.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SOURCES = "('demo', 'served')"
STATES = "('candidate', 'shadow', 'canary', 'active', 'retired', 'rolled_back')"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "episodes",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("task", sa.String(128), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=True),
        _time("started_at"),
        _time("ended_at", nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        _time("reported_at", nullable=True),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('success', 'failure')", name=op.f("ck_episodes_outcome")
        ),
        sa.CheckConstraint(f"source IN {SOURCES}", name=op.f("ck_episodes_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episodes")),
    )
    op.create_index(op.f("ix_episodes_source"), "episodes", ["source"])
    op.create_index(op.f("ix_episodes_started_at"), "episodes", ["started_at"])

    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("nbytes", sa.Integer(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_images")),
    )

    op.create_table(
        "model_versions",
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("parent_digest", sa.String(80), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _time("created_at"),
        sa.CheckConstraint(f"state IN {STATES}", name=op.f("ck_model_versions_state")),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_model_versions_version")),
    )

    op.create_table(
        "requests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        _time("received_at"),
        sa.Column("episode_id", sa.String(128), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("state_dim", sa.Integer(), nullable=False),
        sa.Column("actions", sa.LargeBinary(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("action_dim", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(80), nullable=True),
        sa.Column("num_steps", sa.Integer(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("prefix_ms", sa.Float(), nullable=True),
        sa.Column("expert_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("server_ms", sa.Float(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=True),
        sa.Column("transport", sa.String(16), nullable=True),
        sa.Column("client", sa.String(128), nullable=True),
        sa.CheckConstraint(f"source IN {SOURCES}", name=op.f("ck_requests_source")),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["episodes.id"],
            name=op.f("fk_requests_episode_id_episodes"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
    )
    op.create_index("ix_requests_episode_id_step", "requests", ["episode_id", "step"])
    op.create_index(op.f("ix_requests_model_version"), "requests", ["model_version"])
    op.create_index(op.f("ix_requests_received_at"), "requests", ["received_at"])
    op.create_index(op.f("ix_requests_request_id"), "requests", ["request_id"])
    op.create_index("ix_requests_source_received_at", "requests", ["source", "received_at"])

    op.create_table(
        "version_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        _time("at"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest"],
            ["model_versions.digest"],
            name=op.f("fk_version_transitions_digest_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_transitions")),
    )
    op.create_index(op.f("ix_version_transitions_digest"), "version_transitions", ["digest"])

    op.create_table(
        "request_images",
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["images.sha256"], name=op.f("fk_request_images_image_sha256_images")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_images_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", "camera", name=op.f("pk_request_images")),
    )
    op.create_index(op.f("ix_request_images_image_sha256"), "request_images", ["image_sha256"])


def downgrade() -> None:
    for table in (
        "request_images",
        "version_transitions",
        "requests",
        "model_versions",
        "images",
        "episodes",
    ):
        op.drop_table(table)
