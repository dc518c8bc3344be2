#!/usr/bin/env bash
# Take the person-segmentation model out of the mediapipe 0.10.21 wheel (PyPI) and check it is the
# file streamgw/pipelines/models/ holds (see its NOTICE). Needs pip's access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
want=9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
  mediapipe==0.10.21 -d "$tmp"
unzip -q -o -j "$tmp"/mediapipe-0.10.21-*.whl 'mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite' -d "$tmp"
echo "$want  $tmp/selfie_segmentation.tflite" | sha256sum -c -
cp "$tmp/selfie_segmentation.tflite" streamgw/pipelines/models/
