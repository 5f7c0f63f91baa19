"""codetransfer tasks [show NAME [--n K] [--seed S] [--difficulty D] [--split train|eval]]
codetransfer tasks export DIR [--format jsonl|lm-eval] [--tasks A,B] [--n-items N] [--seed S] [--max-difficulty D]

Without a sub-command: list the task families (name, category, version, difficulties, description).
``show`` prints sample items readably: prompt, candidates with the answer marked, difficulty,
counterfactual answer (and which fact changed), and the twin prompt in the other format.
``export`` writes the items ``codetransfer eval`` scores (same --n-items, --seed, --max-difficulty)
as JSONL, plus lm-evaluation-harness task configs with ``--format lm-eval`` (the default).
"""

from __future__ import annotations

from codetransfer.errors import CodetransferError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="tasks_cmd", metavar="COMMAND")
    show = sub.add_parser("show", help="print sample items of one task family")
    show.add_argument("name", help="task family name (see `codetransfer tasks`)")
    show.add_argument("--n", type=int, default=3, help="number of items (default 3)")
    show.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    show.add_argument("--difficulty", type=int, default=None, help="difficulty level (default: cycle through all)")
    show.add_argument("--split", default="eval", help="'eval' (default) or 'train' entity pools and templates")
    exp = sub.add_parser("export", help="write task items as JSONL and lm-evaluation-harness task configs")
    exp.add_argument("dir", help="output folder (created)")
    exp.add_argument("--format", default="lm-eval", help="'lm-eval' (JSONL + task YAML, default) or 'jsonl'")
    exp.add_argument("--tasks", default=None, help="comma-separated task families (default: all)")
    exp.add_argument("--n-items", type=int, default=200, help="items per task (default 200, as codetransfer eval)")
    exp.add_argument("--seed", type=int, default=0, help="item generator seed (default 0, as codetransfer eval)")
    exp.add_argument("--max-difficulty", type=int, default=None, help="keep items of this difficulty or lower")


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def format_item(item) -> str:
    """A readable multi-line description of one item."""
    lines = [
        f"[{item.task} #{item.index}] difficulty={item.difficulty} rendering={item.rendering} "
        f"template={item.template} version={item.version}",
        "  prompt:",
        _indent(item.prompt),
    ]
    lines.append(
        "  candidates: "
        + "  ".join(f"[{c!r}]" if i == item.label else repr(c) for i, c in enumerate(item.candidates))
        + f"   (answer {item.answer!r}, chance {item.chance:.2f})"
    )
    if item.source:
        lines.append(f"  source: {item.source}")
    cf = item.counterfactual
    if cf is not None:
        changed = [f"{a} -> {b}" for a, b in zip(item.facts, cf.facts) if a != b]
        lines.append(
            f"  counterfactual answer: {cf.answer!r}" + (f"   (changed fact: {', '.join(changed)})" if changed else "")
        )
        if cf.rendering == "text" and len(cf.prompt) < 400:
            lines.append("  counterfactual prompt:")
            lines.append(_indent(cf.prompt))
    if item.twin is not None:
        lines.append(f"  twin ({item.twin.rendering}, answer {item.twin.answer!r}):")
        lines.append(_indent(item.twin.prompt))
    return "\n".join(lines)


def run(args) -> int:
    from codetransfer.tasks import get_task, list_tasks

    if getattr(args, "tasks_cmd", None) in (None, ""):
        rows = list_tasks()
        width = max(len(r["name"]) for r in rows)
        print(f"{'name':<{width}}  {'category':<9}  {'version':<13}  {'difficulties':<12}  description")
        for r in rows:
            d = r["difficulties"]
            diffs = f"{d[0]}-{d[-1]}" if len(d) > 1 else str(d[0])
            print(f"{r['name']:<{width}}  {r['category']:<9}  {r['version']:<13}  {diffs:<12}  {r['description']}")
        return 0
    if args.tasks_cmd == "export":
        from codetransfer.tasks.export import export_tasks

        names = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        files = export_tasks(
            names,
            args.dir,
            format=args.format,
            n_items=args.n_items,
            seed=args.seed,
            max_difficulty=args.max_difficulty,
        )
        print(f"wrote {len(files)} files to {args.dir}")
        if args.format == "lm-eval":
            print(
                f"run: lm_eval --model hf --model_args pretrained=RUN_FOLDER --include_path {args.dir} --tasks codetransfer"
            )
        return 0
    if args.n < 1:
        raise CodetransferError(f"--n must be at least 1, got {args.n}")
    family = get_task(args.name)
    items = family.generate(args.n, args.seed, args.difficulty, split=args.split)
    print("\n\n".join(format_item(it) for it in items))
    return 0
