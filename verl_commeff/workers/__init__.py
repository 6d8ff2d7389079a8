"""verl-side pieces: the actor's tick state, the FSDP engine mixin and the plugin's workers."""
