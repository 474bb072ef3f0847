"""Names several layers need, kept where any of them may import them: ETO's ScienceWorld task types (the
spec checks a task list against them, the environment plays them) and the tiny model presets (the spec
checks a ``tiny:`` reference, the models module builds one)."""

from __future__ import annotations

# ETO's step limit per task type (its episode ends there, success or not)
SCIWORLD_MAX_STEPS: dict[str, int] = {
    "boil": 100,
    "change-the-state-of-matter-of": 80,
    "freeze": 80,
    "melt": 80,
    "measure-melting-point-known-substance": 120,
    "use-thermometer": 30,
    "power-component": 20,
    "power-component-renewable-vs-nonrenewable-energy": 30,
    "test-conductivity": 30,
    "test-conductivity-of-unknown-substances": 30,
    "find-animal": 15,
    "find-living-thing": 15,
    "find-non-living-thing": 15,
    "find-plant": 15,
    "grow-fruit": 60,
    "grow-plant": 30,
    "chemistry-mix": 60,
    "chemistry-mix-paint-secondary-color": 15,
    "chemistry-mix-paint-tertiary-color": 30,
    "lifespan-longest-lived": 10,
    "lifespan-longest-lived-then-shortest-lived": 12,
    "lifespan-shortest-lived": 10,
    "identify-life-stages-1": 30,
    "identify-life-stages-2": 30,
}

SCIWORLD_TASKS: tuple[str, ...] = tuple(SCIWORLD_MAX_STEPS)

# Sizes chosen for ~0.4M and ~3M parameters at a 4k vocabulary (tied embeddings): small enough that
# both converge on a 2-core CPU in minutes, far enough apart that the strong one has the higher ceiling.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "weak": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "strong": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 6,
               "num_key_value_heads": 2},
}
