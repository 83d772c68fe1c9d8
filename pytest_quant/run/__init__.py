"""One pytest session's models, with ownership running one way:

    session (wiring) -> references -> live, measurer -> ledger
                     -> pairs

``pairs`` says which model x recipe runs and which has a reference; ``ledger`` is the one writer of
``Measurements``; ``live`` opens and releases the one live model (VRAM tracker, release check); ``inputs`` holds
the eval windows and prompts, prepared once; ``measurer`` turns what a test needs into ``measure/*`` calls and
returns the reference's kept predictions instead of storing them; ``references`` ensures each model's reference
(ledger -> disk cache -> live + measurer + save) before any variant opens; ``quant_model`` is the fixture value.
"""
