#!/usr/bin/env bash
# Train (or fine-tune) LeRobot's ACT on a dataset recorded by vla-edge, with LeRobot's own `lerobot-train`, offline,
# on the CPU, at a size this project's 2-core machine trains in about an hour (docs/lerobot.md has the figures).
#
#   models/lerobot_train/train.sh DATASET_DIR OUTPUT_DIR [STEPS] [--policy.path=CHECKPOINT/pretrained_model ...]
#   models/lerobot_train/train.sh DATASET_DIR OUTPUT_DIR STEPS --resume    # continue OUTPUT_DIR's run up to STEPS
#
# DATASET_DIR: a LeRobot v3.0 dataset (models.lerobot_train.record_demos, or what the daemon recorded).
# OUTPUT_DIR:  must not exist; checkpoints land in OUTPUT_DIR/checkpoints/NNNNNN/pretrained_model/.
# Extra arguments go to lerobot-train as they are: `--policy.path=…/pretrained_model` fine-tunes a trained policy
# (its size and settings come from that checkpoint, so the size flags below are left out then).
#
# The size: ACT with a ResNet-18 trained from scratch (`pretrained_backbone_weights=null`: ImageNet weights come
# from a model hub, which this project never reaches), transformer width 256, 4 encoder / 1 decoder layers, a
# 2-layer VAE encoder, chunks of 10 actions; 17.1 M parameters. Inputs: the 96x96 camera view,
# observation.state, and observation.environment_state (the instruction's words as 0/1 values: ACT has no
# language model). Target: action = [target_x, target_y, grip, done], `done` included so the daemon knows when a
# step ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 2 ]; then
  echo "usage: $0 DATASET_DIR OUTPUT_DIR [STEPS] [extra lerobot-train arguments]" >&2
  exit 2
fi
DATASET="$1"; OUT="$2"; shift 2
STEPS=3000
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then STEPS="$1"; shift; fi
if [ ! -f "$DATASET/meta/info.json" ]; then echo "train.sh: $DATASET is not a LeRobot dataset (no meta/info.json)" >&2; exit 2; fi
RESUME=0
for arg in "$@"; do [ "$arg" = "--resume" ] && RESUME=1; done
if [ "$RESUME" = 1 ]; then
  CONFIG="$OUT/checkpoints/last/pretrained_model/train_config.json"
  if [ ! -f "$CONFIG" ]; then echo "train.sh: --resume needs $CONFIG" >&2; exit 2; fi
elif [ -e "$OUT" ]; then echo "train.sh: $OUT exists; give a new output directory (or --resume)" >&2; exit 2; fi
if [ ! -x .venv-lerobot/bin/lerobot-train ]; then echo "train.sh: run scripts/setup-lerobot.sh first" >&2; exit 2; fi

SIZE=(--policy.type=act --policy.pretrained_backbone_weights=null
      --policy.dim_model=256 --policy.n_heads=8 --policy.dim_feedforward=1024
      --policy.n_encoder_layers=4 --policy.n_decoder_layers=1 --policy.n_vae_encoder_layers=2
      --policy.chunk_size=10 --policy.n_action_steps=10
      --policy.optimizer_lr=1e-4 --policy.optimizer_lr_backbone=1e-4)
for arg in "$@"; do
  if [[ "$arg" == --policy.path=* ]]; then SIZE=(); fi
done

# torchcodec (LeRobot's default video decoder) needs FFmpeg's shared libraries; without them use PyAV.
BACKEND=pyav
if .venv-lerobot/bin/python -c 'import torchcodec.decoders' >/dev/null 2>&1; then BACKEND=torchcodec; fi

if [ "$RESUME" = 1 ]; then  # the run's own settings; only the step count changes
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" OMP_WAIT_POLICY=PASSIVE
  exec .venv-lerobot/bin/lerobot-train --config_path="$CONFIG" --resume=true --steps="$STEPS"
fi

# One thread: on a CPU shared with other work, two OpenMP threads spend much of their time waiting for each other.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" OMP_WAIT_POLICY=PASSIVE
exec .venv-lerobot/bin/lerobot-train \
  --dataset.repo_id=local/"$(basename "$DATASET")" --dataset.root="$DATASET" --dataset.video_backend="$BACKEND" \
  "${SIZE[@]}" \
  --policy.device=cpu --policy.push_to_hub=false \
  --batch_size=8 --steps="$STEPS" --num_workers=1 --log_freq=50 --save_freq=500 --seed=1000 \
  --wandb.enable=false --output_dir="$OUT" "$@"
