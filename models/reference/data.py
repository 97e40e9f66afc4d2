"""Expert demonstrations as arrays, and the H-step action-chunk targets built from them.

Demos come from ``hil.demos.generate_demos`` (the reference world's scripted expert). They are cached as one
``.npz`` under ``models/work/`` so that training runs can be repeated without regenerating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Demos:
    """Frame-aligned arrays: ``images`` (N,96,96,3) uint8, ``states`` (N,3), ``actions`` (N,4) and the indices
    that say which instruction, chain (episode) and step each frame belongs to."""

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    instructions: tuple[str, ...]
    instruction_index: np.ndarray
    episode_index: np.ndarray
    step_index: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(np.unique(self.episode_index).size)

    def subset(self, mask: np.ndarray) -> Demos:
        return Demos(
            images=self.images[mask],
            states=self.states[mask],
            actions=self.actions[mask],
            instructions=self.instructions,
            instruction_index=self.instruction_index[mask],
            episode_index=self.episode_index[mask],
            step_index=self.step_index[mask],
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            images=self.images,
            states=self.states,
            actions=self.actions,
            instructions=np.asarray(self.instructions),
            instruction_index=self.instruction_index,
            episode_index=self.episode_index,
            step_index=self.step_index,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Demos:
        with np.load(path) as data:
            return cls(
                images=data["images"],
                states=data["states"].astype(np.float32),
                actions=data["actions"].astype(np.float32),
                instructions=tuple(str(s) for s in data["instructions"]),
                instruction_index=data["instruction_index"].astype(np.int64),
                episode_index=data["episode_index"].astype(np.int64),
                step_index=data["step_index"].astype(np.int64),
            )


def _from_demo_set(demo_set: object) -> Demos:
    """Adapt hil's DemoSet (attribute names per docs/architecture.md) to ``Demos``."""
    return Demos(
        images=np.asarray(demo_set.images, dtype=np.uint8),  # type: ignore[attr-defined]
        states=np.asarray(demo_set.states, dtype=np.float32),  # type: ignore[attr-defined]
        actions=np.asarray(demo_set.actions, dtype=np.float32),  # type: ignore[attr-defined]
        instructions=tuple(str(s) for s in demo_set.instructions),  # type: ignore[attr-defined]
        instruction_index=np.asarray(demo_set.instruction_index, dtype=np.int64),  # type: ignore[attr-defined]
        episode_index=np.asarray(demo_set.episode_index, dtype=np.int64),  # type: ignore[attr-defined]
        step_index=np.asarray(demo_set.step_index, dtype=np.int64),  # type: ignore[attr-defined]
    )


def generate_demos(n_chains: int, seed: int, cache: Path | None = None) -> Demos:
    """Expert demonstrations of ``n_chains`` ten-step chains, read from ``cache`` when it is there."""
    if cache is not None and cache.exists():
        return Demos.load(cache)
    from hil.demos import generate_demos as hil_generate_demos

    demos = _from_demo_set(hil_generate_demos(n_chains, seed, None))
    if cache is not None:
        demos.save(cache)
    return demos


def generate_recovery_demos(
    n_chains: int, seed: int, perturb: float = 0.1, cache: Path | None = None, episode_offset: int = 100_000
) -> Demos:
    """Expert demos with perturbations executed now and then (DART-style): the world sees a premature grip
    close, an early release or a position error, and every recorded label is still the expert's own action
    for the state it is in. So the policy also learns to recover: to reopen a gripper that closed on nothing,
    to re-grasp a dropped block, to correct a missed target; states plain demos never show.
    """
    if cache is not None and cache.exists():
        return Demos.load(cache)
    from hil.expert import ScriptedExpert
    from hil.tasks import explain_step, make_chain
    from hil.world import TabletopWorld

    images: list[np.ndarray] = []
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rows: list[tuple[int, int, int]] = []
    instruction_ids: dict[str, int] = {}
    for chain in range(n_chains):
        rng = np.random.default_rng([seed, chain, 7])
        world = TabletopWorld(int(rng.integers(2**31)))
        expert = ScriptedExpert(rng)
        for step_number, step in enumerate(make_chain(rng, world, 10)):
            bins_before = world.block_bins()
            expert.reset(step)
            step_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            while not expert.finished and len(step_rows) < 150:
                image, state = world.render(), world.state()
                label = expert.act(world)
                step_rows.append((image, state, label))
                executed = label.copy()
                if rng.random() < perturb and label[3] < 0.5:
                    kind = rng.integers(3)
                    here = world.gripper_position()
                    if kind == 0 and world.held_block() is None:  # close early, wherever the gripper is
                        executed[:2] = here + rng.normal(0.0, 0.03, size=2)
                        executed[2] = 1.0
                    elif kind == 1 and world.held_block() is not None:  # let go early
                        executed[:2] = here
                        executed[2] = 0.0
                    else:  # miss the target
                        executed[:2] = label[:2] + rng.normal(0.0, 0.05, size=2)
                    executed[:2] = np.clip(executed[:2], 0.0, 1.0)
                world.step(executed)
            if not (expert.finished and explain_step(world, step, bins_before).success):
                continue  # an unrecovered step teaches nothing good
            instruction = instruction_ids.setdefault(step.instruction, len(instruction_ids))
            for frame, (image, state, label) in enumerate(step_rows):
                images.append(image)
                states.append(state)
                actions.append(label)
                rows.append((instruction, episode_offset + chain, step_number))
                del frame
    index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    demos = Demos(
        images=np.stack(images),
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        instructions=tuple(instruction_ids),
        instruction_index=index[:, 0].copy(),
        episode_index=index[:, 1].copy(),
        step_index=index[:, 2].copy(),
    )
    if cache is not None:
        demos.save(cache)
    return demos


def concatenate(first: Demos, second: Demos) -> Demos:
    """One demo set from two, with instruction indices remapped onto one instruction list."""
    instructions = list(first.instructions)
    for text in second.instructions:
        if text not in instructions:
            instructions.append(text)
    remap = np.asarray([instructions.index(text) for text in second.instructions], dtype=np.int64)
    return Demos(
        images=np.concatenate([first.images, second.images]),
        states=np.concatenate([first.states, second.states]),
        actions=np.concatenate([first.actions, second.actions]),
        instructions=tuple(instructions),
        instruction_index=np.concatenate([first.instruction_index, remap[second.instruction_index]]),
        episode_index=np.concatenate([first.episode_index, second.episode_index]),
        step_index=np.concatenate([first.step_index, second.step_index]),
    )


def chunk_index(episode_index: np.ndarray, step_index: np.ndarray, horizon: int) -> np.ndarray:
    """(N, H) frame indices of each frame's next H actions within the same step, padded with the step's last.

    Frames of one step must be contiguous and in time order (as demos are written).
    """
    n = episode_index.shape[0]
    index = np.arange(n)[:, None] + np.arange(horizon)[None, :]
    key = episode_index * 1_000_003 + step_index
    boundary = np.flatnonzero(np.diff(key) != 0) + 1
    starts = np.concatenate([[0], boundary])
    ends = np.concatenate([boundary, [n]])  # exclusive
    last = np.repeat(ends - 1, ends - starts)
    return np.minimum(index, last[:, None])


def target_block_positions(demos: Demos) -> np.ndarray:
    """(N, 2) where the step's named block is at each frame, recovered from the expert's grip commands.

    The expert closes the gripper exactly over the block and opens it exactly over the drop point, so: before
    the grasp the block is where the gripper closes; while carried it moves with the gripper; after the release
    it stays where the gripper opened. Used as an auxiliary training target (teaches the encoder to find the
    named block); never exported.
    """
    out = np.empty((len(demos), 2), dtype=np.float32)
    key = demos.episode_index * 1_000_003 + demos.step_index
    boundary = np.flatnonzero(np.diff(key) != 0) + 1
    for start, end in zip(np.concatenate([[0], boundary]), np.concatenate([boundary, [len(demos)]]), strict=True):
        closes = demos.actions[start:end, 2] > 0.5
        xy = demos.states[start:end, :2]
        if not closes.any():
            out[start:end] = xy[-1]
            continue
        grasp = int(np.argmax(closes))
        opened_after = np.flatnonzero(~closes[grasp:])
        release = grasp + int(opened_after[0]) if opened_after.size else end - start - 1
        out[start : start + grasp] = xy[grasp]
        out[start + grasp : start + release] = xy[grasp:release]
        out[start + release : end] = xy[release]
    return out


def split_by_episode(demos: Demos, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows). Whole chains go to either side, so held-out observations come from layouts
    never trained on. Rows, not copies: the images of a few hundred chains take gigabytes."""
    episodes = np.unique(demos.episode_index)
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(len(episodes) * held_out_fraction)))
    held = rng.choice(episodes, size=n_held, replace=False)
    mask = np.isin(demos.episode_index, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
