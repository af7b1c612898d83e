"""`python -m orchestration.report`: the study's tables and figures regenerated from one sweep's MLflow record.

    python -m orchestration.report [--tracking-uri URI] --experiment NAME [--run PARENT_RUN_ID] [--out DIR]

It reads only the MLflow record -- metrics, params, tags and logged PNGs of the sweep's parent run and its
children; no model is loaded and nothing is recomputed -- and writes, atomically (a temporary folder renamed
into place), into DIR (default `./reports/<parent run name>`):

    report.html   one self-contained page: inline CSS, every image a base64 data URI, no network reference
    report.md     the same tables in Markdown, with the figures beside it as PNG files (fig*.png, real_*.png)

Contents in the study's numbering: the protocol (the study's settings beside this sweep's, and the settings the
study does not state named as this project's choices), Figures 3.2 / 3.3 (training images with their levels, the
augmentation), Table 3.1 and Figure 3.4 (reference rows and one image of each group), Tables 4.1 / 4.3 (each
grid's best value of every metric and the configuration that reached it), Table 4.2 (the DDPM grid per channel
set), Figures 4.1 / 4.2 (the study's choice: the best-FID trial's samples, or its stand-in's), Table 4.4 (the
final models beside the reference rows), Figures 4.3-4.5 (sample and attribute grids beside real images of the
same conditions), 4.6 (loss per optimizer step), 4.7 (every metric per epoch), 4.8 (the CFG Pareto curves), 4.9
(parameter counts), 4.10 (IF stage II super-resolution, or why it is unavailable), the sampler phase and the
augmentation axis when the sweep ran them, "the study's conclusions, checked" (each conclusion against this
run's final models and their seed spread), and an appendix with the record's provenance. Every value shows its sample count where it has one and the
study's published number beside it (orchestration.report.study_numbers); an unavailable metric is named with its
reason, never shown as a number; what the record lacks (a sweep still running, a single family) is listed.

Every sweep writes its report at the end (orchestration.driver), logs it to its parent run under `report/`
and puts the Markdown tables in the parent run's description (`mlflow.note.content`).

The package's rooms: `document` (cells, tables, figures, the report), `render` (HTML, Markdown, the run's note,
the files), `record` (the MLflow reader), `tables` (the one table builder, shared with the terminal summary),
`figures`, `method_figures` (3.2-3.4), `superres` (4.10), `protocol`, `conclusions`, `build` (the assembly, and
the driver's hook `report_sweep`), `cli`.
"""
