# Tables 1-3: the paper's numbers, ours, and the difference, as CSV, Markdown and LaTeX.


rule table_spec:
    output:
        f"{RESULTS}/tables/{{table}}.spec.yaml",
    log:
        f"{RESULTS}/tables/{{table}}.spec.log",
    localrule: True
    params:
        spec=lambda wc: cfg.table_spec(config, wc.table),
    run:
        from dra.io import write_yaml

        write_yaml(output[0], params.spec)


rule build_table:
    input:
        spec=f"{RESULTS}/tables/{{table}}.spec.yaml",
        results=table_inputs,
    output:
        **table_files("{table}"),
    log:
        f"{RESULTS}/tables/{{table}}.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        kind=lambda wc: cfg.table_kind(config, wc.table),
        # results/<scale>, the folder above tables/
        results_root=lambda wc, output: Path(output.csv).parent.parent,
    shell:
        "python -m scripts.build_table --spec {input.spec} --key rows --kind {params.kind}"
        " --results-root {params.results_root} --out-csv {output.csv} --out-md {output.md}"
        " --out-tex {output.tex} 2> {log}"


rule all_tables:
    input:
        [path for table in config["tables"] for path in table_outputs(table)],
        # the canary's (config/canary.yaml): its table of pass or fail, step time and memory per cell
        [f"{RESULTS}/canary.csv"] if config["canary"]["cap_training"] else [],


rule all_replicates:
    # the tables that run more than one seed per cell (tables.<t>.seeds; config/mini-replicates.yaml)
    input:
        [
            path
            for table, spec in config["tables"].items()
            if spec.get("seeds", 1) > 1
            for path in table_outputs(table)
        ],
