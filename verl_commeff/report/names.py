"""Metric names the report reads (the team-wide telemetry contract plus verl's own keys)."""

RESPONSE_LENGTH = "response_length/mean"
ENTROPY = "actor/entropy"
CLIPFRAC = "actor/pg_clipfrac"
SCORE = "critic/score/mean"

ANCHOR_FIRES = "commeff/anchor/fires"
Q_UPDATES = "commeff/codec/q_updates"
RECON_ERR_PREFIX = "commeff/codec/recon_err/layer_"
COMMEFF_PREFIX = "commeff/"
