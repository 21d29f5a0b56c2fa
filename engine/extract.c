/* placeholder until the extract part lands */
#include "core.h"
void mg_open_extract(lua_State *L) { (void)L; }
