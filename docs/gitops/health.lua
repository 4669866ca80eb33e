-- Argo CD health of a dedup2d.io/Dedup2DRollout. Uses only what Argo CD opens for custom scripts
-- (base, table): no string or math library. Mapping and reasons: docs/gitops/README.md.
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function text(v)
  if v == nil then
    return ""
  end
  return tostring(v)
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the rollout"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. text(generation) ..
    " (status is for generation " .. text(status.observedGeneration) .. ")"
  return hs
end

local phase = status.phase
local message = text(status.message)

-- A finished rollout whose Deployments a newer one targets: that one tells the fleet's health.
local superseded = condition(status, "Superseded")
if superseded ~= nil and superseded.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end

if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end
if phase == "RolledBack" or phase == "RollingBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
  return hs
end

-- Holds that wait for a person: a retry or abort request lifts them.
local waitsForPerson = {
  ExternalModification = true,
  ProgressDeadlineExceeded = true,
  Held = true,
}
local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  if waitsForPerson[stalled.reason] then
    hs.status = "Suspended"
  else
    hs.status = "Degraded"
  end
  hs.message = "Stalled (" .. text(stalled.reason) .. ") in " .. phase .. ": " .. text(stalled.message)
  return hs
end

local reconciling = condition(status, "Reconciling")
if (reconciling ~= nil and reconciling.reason == "Paused") or obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = message
  return hs
end
if phase == "AwaitingFinalize" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end

hs.status = "Progressing"
hs.message = message
return hs
