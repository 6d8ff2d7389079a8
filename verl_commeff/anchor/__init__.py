"""The anchor: dense gradient at stale generator weights on the paired replay (SPEC §3)."""
