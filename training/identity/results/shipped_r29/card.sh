# Regenerates edge/models/identity/MODEL_CARD.md from the measured JSON (run from the repository root).
R=training/landmarks/results/cfp_profiles
A=training/identity/results/dlib_ablation
.venv/bin/python -m training.identity finetune-card --model edge/models/identity/poseface_r29.onnx --run training/identity/results/shipped_r29 \
  --eval "detector=$R/identity_r29_stc_landmarks.json" --eval "fiducials=$R/identity_r29_stc_landmarks_fiducials.json" \
  --eval "detector, int8=$R/identity_r29_int8_stc_landmarks_int8.json" \
  --eval "detector, as-norm=$R/identity_r29_stc_landmarks_asnorm.json" \
  --eval "detector, int8, as-norm=$R/identity_r29_int8_stc_landmarks_int8_asnorm.json" \
  --ablation $A --student-eval $A/eval_student_detector.json --student-run training/identity/results/student_r29 \
  --bench $A/bench_r29_vs_mfn.json \
  --demo training/identity/results/shipped_r29/people_demo.json \
  --demo training/identity/results/shipped_r29/people_demo_stranger_rate_0.01.json \
  --opensim training/identity/results/shipped_r29/opensim_fold9.json \
  --opensim training/identity/results/shipped_r29/opensim_fold9_stranger_rate_0.01.json \
  --recipe training/identity/configs/dlib/shipped.toml
