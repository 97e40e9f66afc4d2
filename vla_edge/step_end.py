"""How a task step ends and what the action vector means, from the bundle manifest (docs/bundle-format.md,
``step_end``, ``action_space.names``) instead of the reference's fixed ``[x, y, grip, done]``.

Pure logic: the executor feeds it what happened (actions sent, chunks accepted, the success detector's value, the
time) and asks whether the step is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_edge.bundle_schema import BundleManifestV2


@dataclass(frozen=True)
class ActionLayout:
    """The action and state vectors by name, and the rule that ends a step."""

    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    horizon: int
    done_index: int | None
    done_threshold: float
    max_chunks: int | None
    max_seconds: float | None
    success_threshold: float | None
    success_every_chunks: int
    external: bool

    @property
    def state_source(self) -> tuple[int, ...]:
        """For each state value, the index of the measured action-space value it is (the controller reports its
        position in the action's units and order, docs/wire.md §3): the action of the same name, else the same
        index. Raises ValueError for a state the controller cannot report."""
        by_name = {name: i for i, name in enumerate(self.action_names)}
        out = []
        for i, name in enumerate(self.state_names):
            j = by_name.get(name, i if i < len(self.action_names) else -1)
            if j < 0:
                raise ValueError(
                    f"state {name!r} cannot be measured: the controller reports the action vector "
                    f"{list(self.action_names)}, which has no value of that name or index"
                )
            out.append(j)
        return tuple(out)

    def state_from_measured(self, actual: object) -> np.ndarray:
        """The policy's state from a controller state report's ``actual`` values."""
        values = np.asarray(actual, dtype=np.float32).reshape(-1)
        return values[list(self.state_source)]

    @classmethod
    def of(cls, manifest: BundleManifestV2) -> ActionLayout:
        """Raises ValueError when a state value is not among what the controller reports (state_source)."""
        rule = manifest.step_end
        names = tuple(manifest.action_space.names)
        layout = cls(
            action_names=names,
            state_names=tuple(manifest.observation.state.names),
            horizon=manifest.horizon,
            done_index=names.index(rule.done_action) if rule.done_action is not None else None,
            done_threshold=rule.done_threshold,
            max_chunks=rule.max_chunks,
            max_seconds=rule.max_seconds,
            success_threshold=rule.success.threshold if rule.success is not None else None,
            success_every_chunks=rule.success.every_chunks if rule.success is not None else 1,
            external=rule.external,
        )
        layout.state_source  # noqa: B018 - fail at start-up, not at the first tick
        return layout

    @property
    def grip_index(self) -> int | None:
        """The first action dimension whose name says grip/gripper (teleoperation's grip key), or None."""
        for i, name in enumerate(self.action_names):
            if "grip" in name.lower():
                return i
        return None

    def is_done(self, action: np.ndarray) -> bool:
        """Whether an executed action says the step is finished (False when the bundle has no done dimension)."""
        return self.done_index is not None and bool(action[self.done_index] > self.done_threshold)

    def teleop_action(self, base: np.ndarray, dx: float, dy: float, grip: float | None, done: bool) -> np.ndarray:
        """An operator's command in this action space: the console's two axes move the first two dimensions of
        ``base`` (the last action sent, or the measured state where names agree), its grip key sets the grip
        dimension, its 'done' sets the done dimension; every other dimension holds."""
        action = np.array(base, dtype=np.float32, copy=True)
        if action.shape[0] >= 2:
            action[0] += dx
            action[1] += dy
        if grip is not None and self.grip_index is not None:
            action[self.grip_index] = grip
        if self.done_index is not None:
            action[self.done_index] = 1.0 if done else 0.0
        return action

    def initial_action(self, measured: np.ndarray | None, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Where teleoperation starts: the controller's measured position (it reports the action vector, in the
        action's order), else the middle of the action range; the done dimension starts at 0."""
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        action = ((low + high) / 2).astype(np.float32)
        if measured is not None:
            values = np.asarray(measured, np.float32).reshape(-1)[: action.shape[0]]
            action[: values.shape[0]] = np.clip(values, low[: values.shape[0]], high[: values.shape[0]])
        if self.done_index is not None:
            action[self.done_index] = 0.0
        return action


@dataclass
class StepEndTracker:
    """One step's progress against the chunk, time and success-detector rules: ``check`` says why the step ends,
    or None."""

    layout: ActionLayout
    started_ns: int
    actions_sent: int = 0
    chunks_accepted: int = 0
    success_p: float | None = None
    _reason: str | None = field(default=None, repr=False)

    def on_action(self, action: np.ndarray) -> None:
        """An action was sent. (The done dimension is the executor's: it ends the step once such a command was
        actuated, which only the controller can confirm.)"""
        self.actions_sent += 1

    def on_chunk(self, success_p: float | None = None) -> None:
        self.chunks_accepted += 1
        threshold = self.layout.success_threshold
        if threshold is not None and success_p is not None \
                and self.chunks_accepted % self.layout.success_every_chunks == 0:
            self.success_p = success_p
            if success_p > threshold:
                self._reason = self._reason or f"success detector {success_p:.2f} > {threshold:g}"

    def check(self, now_ns: int) -> str | None:
        if self._reason is not None:
            return self._reason
        layout = self.layout
        if layout.max_chunks is not None and self.actions_sent >= layout.max_chunks * layout.horizon:
            return f"{layout.max_chunks} chunk(s) executed (step_end.max_chunks)"
        if layout.max_seconds is not None and now_ns - self.started_ns >= layout.max_seconds * 1e9:
            return f"{layout.max_seconds:g} s elapsed (step_end.max_seconds)"
        return None
