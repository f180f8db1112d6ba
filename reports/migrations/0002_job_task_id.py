from django.db import migrations, models


class Migration(migrations.Migration):
    """Job.task, a foreign key to tasks.TaskRecord, becomes Job.task_id, a plain UUID.

    The same column, values kept: only the foreign-key constraint and its index go.
    reports reads its tasks through django.tasks, never the runner's table.
    """

    dependencies = [
        ("reports", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="task",
            field=models.UUIDField(blank=True, db_column="task_id", null=True),
        ),
        migrations.RenameField(model_name="job", old_name="task", new_name="task_id"),
    ]
