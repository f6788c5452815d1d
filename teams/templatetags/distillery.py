from django import template

register = template.Library()


@register.filter
def as_label(key: str) -> str:
    """`rows_read` → `Rows read`, for showing stored figures to people."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]
