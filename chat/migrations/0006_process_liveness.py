import django.db.models.deletion
from django.db import migrations, models


def forget_sockets(apps, schema_editor):
    """Presence rows are open sockets: none outlives the deploy that runs this (daphnes restart)."""
    apps.get_model("chat", "Presence").objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0005_edits"),
    ]

    operations = [
        migrations.CreateModel(
            name="ServerProcess",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("started", models.DateTimeField(auto_now_add=True)),
                ("last_seen", models.DateTimeField(db_index=True)),
            ],
        ),
        migrations.RunPython(forget_sockets, migrations.RunPython.noop),
        migrations.RemoveField(model_name="presence", name="last_seen"),
        migrations.AddField(
            model_name="presence",
            name="process",
            field=models.ForeignKey(
                default=0,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="presences",
                to="chat.serverprocess",
            ),
            preserve_default=False,
        ),
    ]
