-- Send the `retry` request: the dedup2d.io/request annotation, with a nonce so a repeat acts again.
local os = require("os")
local verb = "retry"
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local current = obj.metadata.annotations["dedup2d.io/request"]
local value = verb .. ":" .. tostring(os.time())
local n = 0
while value == current do
  n = n + 1
  value = verb .. ":" .. tostring(os.time()) .. "-" .. tostring(n)
end
obj.metadata.annotations["dedup2d.io/request"] = value
return obj
