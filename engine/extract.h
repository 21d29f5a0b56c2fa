/* modelget engine: archive listing and safe extraction (engine/extract.c).
 * The Lua functions are archive_list and extract; see docs/DESIGN.md, "Extraction". */
#ifndef MODELGET_EXTRACT_H
#define MODELGET_EXTRACT_H

/* Defaults the Lua layers may rely on (and restate in their own policy). */
#define MG_EXTRACT_MAX_ENTRIES 100000
#define MG_EXTRACT_MIN_MAX_BYTES (64ll << 20) /* max_bytes default: max(100 x archive size, this) */
#define MG_EXTRACT_PROGRESS_ENTRIES 64        /* on_progress at most every this many entries … */
#define MG_EXTRACT_PROGRESS_BYTES (8ll << 20) /* … or this many expanded bytes */

#endif
