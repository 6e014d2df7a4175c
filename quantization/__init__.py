"""Export and int8 variants of the shipped models, with accuracy reports."""
