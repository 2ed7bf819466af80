"""`facesort clean`: relabel or trash the images a user marked in review.csv, all or nothing, undoable."""
import click

from . import exit_codes, reports_errors
from ..errors import FacesortError


@click.command(epilog=exit_codes())
@click.argument("review_csv", required=False, type=click.Path(dir_okay=False))
@click.option("--apply", "apply_", is_flag=True, help="Do it (without this, only show what would happen).")
@click.option("--undo", "undo_log", type=click.Path(dir_okay=False),
              help="Reverse an applied clean, given the undo log it wrote.")
@reports_errors
def clean(review_csv, apply_, undo_log):
    """Act on the `action` column of REVIEW_CSV: male, female or neither moves the image into that label folder
    beside its own; delete moves it into DATA_DIR/.facesort-trash/ (never deleted for good); empty keeps it.

    Rows that cannot be done safely (unknown action, path outside DATA_DIR, file changed since the review, name
    taken) are listed and nothing changes. --apply writes an undo log; `clean --undo LOG --apply` reverses it.
    """
    if bool(review_csv) == bool(undo_log):
        raise click.UsageError("give either REVIEW_CSV or --undo LOG")
    from ..cleaning import apply_plan, apply_undo, describe, plan_clean, plan_undo

    if undo_log:
        _, pairs, refused = plan_undo(undo_log)
        lines = [f"restore: {target} -> {source}" for target, source in pairs]
    else:
        plan = plan_clean(review_csv)
        refused, lines = plan.refused, [describe(move) for move in plan.moves]
        lines.append(f"{len(plan.moves)} to move, {plan.kept} kept, {len(refused)} refused")
    for line in lines:
        click.echo(line)
    for message in refused:
        click.echo(f"refused: {message}", err=True)
    if refused:
        raise FacesortError(f"{len(refused)} refused: nothing changed")
    if not apply_:
        click.echo("nothing changed: add --apply to do it")
    elif undo_log:
        click.echo(f"restored {apply_undo(undo_log)} files")
    else:
        log_path = apply_plan(plan, review_csv)
        click.echo(f"done; undo log: {log_path}" if log_path else "nothing to move")
