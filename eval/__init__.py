"""Evaluation: DAVIS conversion (convert_davis), the DAVIS-2017 semi-supervised scorer (davis_io, davis_metrics,
evaluate_davis) and the test -> convert -> score driver (run_test)."""
