"""Metric names the report reads (the team-wide telemetry contract plus verl's own keys)."""

RESPONSE_LENGTH = "response_length/mean"
ENTROPY = "actor/entropy"
CLIPFRAC = "actor/pg_clipfrac"
SCORE = "critic/score/mean"

ANCHOR_FIRES = "commeff/anchor/fires"
Q_UPDATES = "commeff/codec/q_updates"
RECON_ERR_PREFIX = "commeff/codec/recon_err/layer_"
COMMEFF_PREFIX = "commeff/"

# the dose and the anchor's evidence (docs/method.md, the evidence dose)
LAMBDA = "commeff/merger/lambda"
LAMBDA_STAR = "commeff/dose/lambda_star"
COS_CODEC = "commeff/dose/cos_codec"
HELD_AGREE = "commeff/dose/held_agree"
DOSE_PANELS = (
    ("λ applied (commeff/merger/lambda)", LAMBDA),
    ("λ* measured by the anchor", LAMBDA_STAR),
    ("cos(C, D): fast path vs dense", COS_CODEC),
    ("held M̄ agreement with D (|D|-weighted)", HELD_AGREE),
)
