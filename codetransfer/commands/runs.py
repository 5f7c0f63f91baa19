"""codetransfer runs [DIR]"""


def add_arguments(p) -> None:
    p.add_argument("folder", nargs="?", default="runs", help="a grid output folder (default: ./runs)")


def run(args) -> int:
    import pandas as pd

    from codetransfer.trained import runs_table

    table = runs_table(args.folder)
    if table.empty:
        print(f"no runs in {args.folder}")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.drop(columns="description").to_string(index=False))
    if "warmup" in table:
        from codetransfer.trained.warmup import PLANTED_COPY_LOSS, failed

        bad = table[(table["warmup"] == "periodic") & pd.to_numeric(table["warmup_copy_loss"]).map(failed)]
        if len(bad):
            print(
                f"\nwarm-up did not plant the copying circuit (copy loss >= {PLANTED_COPY_LOSS:g} nats) in: "
                + ", ".join(bad["run"])
                + "; lower train.induction_warmup_lr or raise train.induction_warmup"
            )
    described = table.drop_duplicates("recipe").query("description != ''")
    if len(described):
        print("\nrecipes:")
        for recipe, description in zip(described["recipe"], described["description"]):
            print(f"  {recipe}: {description}")
    return 0
