#!/bin/sh
cd "$(dirname "$0")/../../../.."
R=training/landmarks/results/cfp_profiles
V=$R/validation
.venv/bin/python -m training.landmarks card --run $R/run_stc --recipe training/landmarks/configs/light_cfp_stc_cpu.toml --model edge/models/landmarks/pipnet_light_stc.onnx --out edge/models/landmarks/MODEL_CARD.md --intro $R/card_intro.md \
 --w300 "old=$R/old_300w_val.json" --w300 "old=$R/old_300w_val_det_r0.json" --w300 "old (its device setting)=$R/old_300w_val_det_r1.json" \
 --w300 "fiducial model (previous default)=$R/new_300w_val.json" --w300 "fiducial model (its device setting)=$R/new_300w_val_det_r0.json" \
 --w300 "**this model**=$R/stc_300w_val.json" --w300 "**this model (its device setting)**=$R/stc_300w_val_det_r0.json" --w300 "this model=$R/stc_300w_val_det_r1.json" \
 --w300 "dlib's 68-point predictor (its own HOG box, offset removed; trained on 300-W with these photos)=$R/dlib_300w_val.json" \
 --w300 "validation: dlib trunk arm=$V/dlib_best_300w_lm.json" --w300 "validation: dlib trunk arm=$V/dlib_best_300w_det_r0.json" \
 --cfp "old, fold 9=$R/old_cfp9_r0.json" --cfp "old, fold 9=$R/old_cfp9_r1.json" --cfp "fiducial model, fold 9=$R/new_cfp9_r0.json" \
 --cfp "**this model, fold 9**=$R/stc_cfp9_r0.json" --cfp "this model, fold 9=$R/stc_cfp9_r1.json" \
 --cfp "validation: old=$V/shipped_cfp8_r0.json" --cfp "validation: fiducial model (light arm)=$V/light_best_cfp8_r0.json" --cfp "validation: STC round 1 (this model)=$V/stc_round1_cfp8_r0.json" --cfp "validation: dlib trunk arm=$V/dlib_best_cfp8_r0.json" \
 --pose "old, fold 9=$R/old_pose9_r0.json" --pose "old, fold 9=$R/old_pose9_r1.json" --pose "fiducial model, fold 9=$R/new_pose9_r0.json" \
 --pose "**this model, fold 9**=$R/stc_pose9_r0.json" --pose "this model, fold 9=$R/stc_pose9_r1.json" \
 --pose "CFP's hand-marked fiducials (no model), fold 9=$R/fiducials_pose9.json" --pose "validation: CFP's fiducials (no model)=$V/fiducials_pose8.json" \
 --pose "validation: old=$V/shipped_pose8_r0.json" --pose "validation: fiducial model (light arm)=$V/light_best_pose8_r0.json" --pose "validation: STC round 1 (this model)=$V/stc_round1_pose8_r0.json" --pose "validation: dlib trunk arm=$V/dlib_best_pose8_r0.json" \
 --identity "old landmarks (2 passes)=$R/identity_r29_old_landmarks.json" --identity "fiducial model (1 pass)=$R/identity_r29_new_landmarks.json" --identity "**this model (1 pass)**=$R/identity_r29_stc_landmarks.json" --identity "this model, int8 with r29 int8=$R/identity_r29_int8_stc_landmarks_int8.json" \
 --latency $R/bench_landmarks_stc.json
