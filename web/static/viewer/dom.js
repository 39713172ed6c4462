/** The page's elements by their data-role, for the viewer and the MPR page.
 *
 * byRole(root, ["canvas", "banner-text"]) is { canvas: <canvas data-role="canvas">,
 * bannerText: <… data-role="banner-text"> }: one list of roles instead of a line per element. */
export function byRole(root, roles) {
  const found = {};
  for (const role of roles) {
    const key = role.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    found[key] = root.querySelector(`[data-role="${role}"]`);
  }
  return found;
}
