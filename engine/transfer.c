/* placeholder until the transfer part lands */
#include "core.h"
void mg_open_transfer(lua_State *L) { (void)L; }
